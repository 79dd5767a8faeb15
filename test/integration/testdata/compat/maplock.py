# Holds locks the way SQLite in WAL mode holds them on its -shm file: the
# file is mapped shared and POSIX-locked (an exclusive lock on one byte, a
# shared lock on another) through a descriptor of its own. Counts in the
# counter file, and writes its count into the mapping too.
import fcntl
import mmap
import os
import sys
import time

# With a third argument TRIGGER, it takes the locks only once the file
# TRIGGER exists, and then creates TRIGGER.locked.
path, counter = sys.argv[1], sys.argv[2]
trigger = sys.argv[3] if len(sys.argv) > 3 else None
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 32768)
shm = mmap.mmap(fd, 32768, mmap.MAP_SHARED)
locked = False
i = 0
while True:
    if not locked and (trigger is None or os.path.exists(trigger)):
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 120)
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, 128)
        locked = True
        if trigger:
            open(trigger + ".locked", "w").close()
    shm[0:8] = i.to_bytes(8, "little")
    with open(counter + ".tmp", "w") as f:
        f.write("%d\n" % i)
    os.replace(counter + ".tmp", counter)
    i += 1
    time.sleep(0.05)
