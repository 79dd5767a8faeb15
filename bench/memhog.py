# A process holding SIZE_MIB of private memory, half random bytes, half
# text, for `make bench`. Writes "ready" to argv[1] when the memory is in
# place, then sleeps.
import os, sys, time

size = int(sys.argv[2]) << 20
half = size // 2
rnd = bytearray(os.urandom(half))
line = b"the quick brown fox jumps over the lazy dog; step=0123456789 loss=0.4231\n"
txt = bytearray(line * (half // len(line) + 1))[:half]
with open(sys.argv[1], "w") as f:
    f.write("ready")
while True:
    time.sleep(1)
