#!/usr/bin/env python3
"""Runs a command and samples, every 100 ms, each thread of its process tree from /proc:
user and system CPU time, minor/major page faults, the CPU it last ran on, and context
switches; the machine's per-CPU busy time beside it. Prints one JSON summary at the end
(to the file named by --out, the command's own output going to stdout as usual).

A poor man's profile of the scan's host threads where nsys is not installed: it tells a
thread that computes (user time) from one that faults pages or waits in the kernel (system
time, page faults) from one that sleeps (neither), and on which cores each ran.
Usage: threads.py --out FILE -- COMMAND [ARGS...]"""
import json, os, subprocess, sys, time

def children_of(pid):
    out = []
    for p in os.listdir('/proc'):
        if not p.isdigit():
            continue
        try:
            st = open(f'/proc/{p}/stat').read()
        except OSError:
            continue
        ppid = int(st[st.rindex(')') + 2:].split()[1])
        if ppid == pid:
            out.append(int(p))
    return out

def tree(pid):
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(children_of(p))
    return seen

def thread_stat(pid, tid):
    st = open(f'/proc/{pid}/task/{tid}/stat').read()
    comm = st[st.index('(') + 1:st.rindex(')')]
    f = st[st.rindex(')') + 2:].split()
    # fields after comm: state=0 ppid=1 ... minflt=7 majflt=9 utime=11 stime=12 processor=36
    sw = {}
    try:
        for line in open(f'/proc/{pid}/task/{tid}/status'):
            if 'ctxt_switches' in line:
                k, v = line.split(':')
                sw[k.strip()] = int(v)
    except OSError:
        pass
    return comm, int(f[7]), int(f[9]), int(f[11]), int(f[12]), int(f[36]), sw

def cpu_busy():
    busy = {}
    for line in open('/proc/stat'):
        if line.startswith('cpu') and line[3].isdigit():
            v = list(map(int, line.split()[1:]))
            busy[line.split()[0]] = (v[0] + v[1] + v[2] + v[5] + v[6], sum(v))
    return busy

def main():
    args = sys.argv[1:]
    out = args[args.index('--out') + 1]
    cmd = args[args.index('--') + 1:]
    hz = os.sysconf('SC_CLK_TCK')
    cpu0 = cpu_busy()
    t0 = time.time()
    proc = subprocess.Popen(cmd)
    threads = {}
    samples = 0
    while proc.poll() is None:
        for pid in tree(proc.pid):
            try:
                tids = os.listdir(f'/proc/{pid}/task')
            except OSError:
                continue
            for tid in tids:
                try:
                    comm, minflt, majflt, ut, stt, cpu, sw = thread_stat(pid, tid)
                except (OSError, ValueError, IndexError):
                    continue
                t = threads.setdefault(f'{pid}/{tid}', {'comm': comm, 'cpus': {}, 'first': time.time() - t0})
                t.update(comm=comm, minflt=minflt, majflt=majflt, user_s=ut / hz, system_s=stt / hz,
                         last=time.time() - t0, **sw)
                t['cpus'][cpu] = t['cpus'].get(cpu, 0) + 1
        samples += 1
        time.sleep(0.1)
    cpu1 = cpu_busy()
    per_cpu = {c: round((cpu1[c][0] - cpu0[c][0]) / max(1, cpu1[c][1] - cpu0[c][1]), 3) for c in cpu1}
    busy = sorted(threads.values(), key=lambda t: -(t.get('user_s', 0) + t.get('system_s', 0)))
    summary = {'command': cmd, 'rc': proc.returncode, 'seconds': round(time.time() - t0, 2),
               'samples': samples, 'per_cpu_busy': per_cpu,
               'threads': [t for t in busy if t.get('user_s', 0) + t.get('system_s', 0) > 0.05][:12]}
    json.dump(summary, open(out, 'w'), indent=1)
    for t in summary['threads'][:6]:
        print(f"  thread {t['comm']}: user {t.get('user_s',0):.1f} s, system {t.get('system_s',0):.1f} s, "
              f"minflt {t.get('minflt',0)}, majflt {t.get('majflt',0)}, "
              f"cswitch vol/invol {t.get('voluntary_ctxt_switches','-')}/{t.get('nonvoluntary_ctxt_switches','-')}, "
              f"cpus {sorted(t['cpus'].items(), key=lambda x: -x[1])[:4]}", file=sys.stderr)
    sys.exit(proc.returncode)

main()
