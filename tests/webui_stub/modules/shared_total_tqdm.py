from __future__ import annotations


class TotalTQDM:
    def __init__(self):
        self._tqdm = None
        self.updates = 0

    def update(self):
        self.updates += 1

    def updateTotal(self, new_total):
        if self._tqdm is not None:
            self._tqdm.total = new_total

    def clear(self):
        self._tqdm = None
