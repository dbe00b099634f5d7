import threading

queue_lock = threading.Lock()   # held while the WebUI runs a job
