"""What the host took from a benchmark: the CPU time its hypervisor stole while it measured.

On a virtual machine the hypervisor may run other guests on this guest's CPUs; the time it
takes from them is counted as steal in /proc/stat. A wall-clock figure measured while much was
stolen says more about the neighbours than about the code: both sides of a ratio lose CPU, but
not in the same measure, as the steal comes in bursts. So the wall-clock benchmarks measure the
steal of each round, take their median over the rounds the host left alone when there are
any, and print the steal beside the figures.
"""

import os
import time

# More than this share of the machine's CPU time stolen during a round marks the round.
MARKED_SHARE = 0.02


def stolen_seconds():
    """CPU time stolen from this machine since it booted, all CPUs together (0 where the
    kernel does not count it)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    # cpu user nice system idle iowait irq softirq steal ...
    if len(fields) < 9:
        return 0.0
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


class Steal:
    """The steal over one stretch of a run: start one with `Steal.start()`, close it with
    `end()`."""

    def __init__(self, seconds=0.0, wall=0.0):
        self.seconds = seconds
        self.wall = wall
        self._started = None

    @classmethod
    def start(cls):
        steal = cls()
        steal._started = (stolen_seconds(), time.monotonic())
        return steal

    def end(self):
        stolen, started = self._started
        self.seconds = stolen_seconds() - stolen
        self.wall = time.monotonic() - started
        return self

    def share(self):
        """The stolen share of all the machine's CPU time over the stretch."""
        return self.seconds / (self.wall * (os.cpu_count() or 1)) if self.wall > 0 else 0.0

    def marked(self):
        return self.share() > MARKED_SHARE

    def __add__(self, other):
        return Steal(self.seconds + other.seconds, self.wall + other.wall)

    def __str__(self):
        return f"{self.seconds:.1f} s ({self.share():.1%})"


def median_round(ratios, steals):
    """The index of the round whose ratio is the median: of the rounds the host left alone
    (steal at most MARKED_SHARE) when there are any, else of all. Also says which it chose
    from."""
    calm = [i for i, steal in enumerate(steals) if not steal.marked()]
    pool = calm or list(range(len(ratios)))
    chosen = sorted(pool, key=lambda i: ratios[i])[len(pool) // 2]
    if calm and len(calm) < len(ratios):
        rounds = "the round" if len(calm) == 1 else f"the {len(calm)} rounds"
        basis = f"of {rounds} with at most {MARKED_SHARE:.0%} stolen"
    elif calm:
        basis = f"of {len(ratios)}"
    else:
        basis = f"of {len(ratios)}, every one with more than {MARKED_SHARE:.0%} stolen"
    return chosen, basis


def summary(total):
    """One line on the steal of a whole run, and a warning where it was more than a trace."""
    line = f"CPU stolen by the hypervisor while measuring: {total} of the machine's CPU time"
    if total.marked():
        line += (f"; more than {MARKED_SHARE:.0%}: the wall-clock figures of this run say as much about the"
                 " host as about the code (bench/instructions.py counts instructions, which steal does not move)")
    return line
