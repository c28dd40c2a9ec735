#!/usr/bin/python3
"""timeit.py CMD...: run CMD, then print "WALL_SECONDS CPU_SECONDS EXIT" on
stderr's last line, where CPU is the user+system time of CMD and its
children (resource.getrusage), so benchmarks can compare CPU per message."""
import resource
import subprocess
import sys
import time

before = resource.getrusage(resource.RUSAGE_CHILDREN)
t0 = time.monotonic()
p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL if "--quiet" in sys.argv[:1] else None)
wall = time.monotonic() - t0
after = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
sys.stdout.flush()
print("%.6f %.6f %d" % (wall, cpu, p.returncode), file=sys.stderr)
sys.exit(0)
