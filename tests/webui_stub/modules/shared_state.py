"""The progress and the Interrupt/Skip/Stop state of the running job."""
from __future__ import annotations


class State:
    def __init__(self):
        self.skipped = self.interrupted = self.stopping_generation = False
        self.job, self.job_no, self.job_count = "", 0, 0
        self.sampling_step = self.sampling_steps = 0
        self.textinfo = self.current_latent = None

    def skip(self):
        self.skipped = True

    def interrupt(self):
        self.interrupted = True

    def stop_generating(self):
        self.stopping_generation = True

    def nextjob(self):
        self.job_no += 1
        self.sampling_step = 0

    def begin(self, job: str = "(unknown)"):
        self.__init__()
        self.job, self.job_count = job, -1

    def end(self):
        self.job, self.job_count = "", 0
