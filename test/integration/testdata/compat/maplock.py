# Holds locks the way SQLite in WAL mode holds them on its -shm file: the
# file is mapped shared and POSIX-locked (an exclusive lock on one byte, a
# shared lock on another) through a descriptor of its own. Counts in the
# counter file, and writes its count into the mapping too.
import fcntl
import mmap
import os
import sys
import time

path, counter = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 32768)
shm = mmap.mmap(fd, 32768, mmap.MAP_SHARED)
fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 120)
fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, 128)
i = 0
while True:
    shm[0:8] = i.to_bytes(8, "little")
    with open(counter + ".tmp", "w") as f:
        f.write("%d\n" % i)
    os.replace(counter + ".tmp", counter)
    i += 1
    time.sleep(0.05)
