"""Where a results file came from: one record, written by every benchmark script into its JSON under `provenance`.

    from benchmarks.provenance import Run
    run = Run(__spec__.name, argv, out=a.out)    # at the start: commit, dirty tree, command line, date, versions, load
    ...
    run.write(res, a.out)                        # res['provenance'] = run.record(); the JSON is written atomically

The record (`FIELDS`): `git_commit` (`git rev-parse HEAD`; outside a git checkout the run fails rather than record
null), `git_dirty` (`git status --porcelain` lists anything but the output file itself, and `dirty_paths` which),
`command` (the command line as run, `python -m benchmarks.<name> ...`, built from the arguments, never typed),
`date`, `versions` (python, torch, fastai, transformers, peft, numpy, pandas, fine_tuning_flm and each installed
peer), `host` (CPU count, machine, torch threads), `load_average_start`/`load_average_end` and `wall_seconds`.

Files written before this helper existed cannot have all of that. `python -m benchmarks.provenance --not-regenerated
FILE...` gives such a file `regenerated: false`, the commit that last changed it (`results_commit`, also its
`git_commit`), the fields it did record itself, and a `provenance_note` naming the unknown ones.
`tests/test_provenance.py` accepts exactly those two forms."""
import argparse, datetime, importlib.metadata, json, os, platform, re, shlex, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT/'benchmarks'/'results'
PACKAGES = ('torch', 'fastai', 'transformers', 'peft', 'numpy', 'pandas', 'fine_tuning_flm')
PEERS = ('cornac', 'implicit', 'lightfm', 'scikit-surprise', 'mabwiser', 'recbole', 'rectools')
FIELDS = ('git_commit', 'git_dirty', 'command', 'date', 'versions', 'host', 'load_average_start', 'load_average_end', 'wall_seconds')
HOST = ('cpus', 'machine', 'torch_threads')

def _git(*args) -> str:
    r = subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if r.returncode: raise RuntimeError(f"benchmarks.provenance: `git {' '.join(args)}` failed in {ROOT}: {r.stderr.strip() or r.returncode}")
    return r.stdout

def git_commit() -> str:
    "The checked-out commit: 40 hex digits, or an error (a results file never records a null commit)."
    c = _git('rev-parse', 'HEAD').strip()
    if not re.fullmatch('[0-9a-f]{40}', c): raise RuntimeError(f"benchmarks.provenance: `git rev-parse HEAD` gave {c!r}, not a commit")
    return c

def _rel(path) -> str|None:
    "`path` relative to the repository root, as git writes it (None when it is outside the repository)."
    try: return Path(os.path.abspath(path)).relative_to(ROOT).as_posix()
    except ValueError: return None

def _is_tmp_of(p:str, target:str) -> bool:
    "Is `p` a temporary file `atomic_write` makes next to `target` (`.name.XXXX.tmp`)?"
    a, b = Path(p), Path(target)
    return a.parent == b.parent and a.name.startswith(f'.{b.name}.') and a.name.endswith('.tmp')

def dirty_paths(ignore=()) -> list:
    "What `git status --porcelain` lists (changed, staged or untracked paths), except the paths in `ignore` and their temporary twins."
    ign = [r for r in map(_rel, ignore) if r]
    out = []
    for line in _git('status', '--porcelain').splitlines():
        p = line[3:].split(' -> ')[-1].strip('"')
        if not any(p == i or _is_tmp_of(p, i) for i in ign): out.append(p)
    return out

def _version(dist:str) -> str|None:
    try: return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError: return None

def versions() -> dict:
    "python and the core packages (None when absent), then every peer that is installed."
    out = {'python': platform.python_version(), **{p: _version(p) for p in PACKAGES}}
    return out | {p: v for p in PEERS if (v := _version(p)) is not None}

def host() -> dict:
    "CPU count, machine, torch's threads now (a script sets them after it starts), CPU model and memory."
    import torch
    cpu = ''
    try: cpu = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), '')
    except OSError: pass
    mem = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30 if hasattr(os, 'sysconf') else None
    return dict(cpus=os.cpu_count(), machine=platform.machine(), torch_threads=torch.get_num_threads(), cpu_model=cpu or platform.processor(),
                memory_gb=None if mem is None else round(mem, 1))

def command(module:str, argv) -> str:
    "The command line that runs `module` with `argv`, quoted as a shell would need it."
    return ' '.join(['python', '-m', module, *map(shlex.quote, map(str, argv))])

def _load() -> list: return [round(x, 2) for x in os.getloadavg()]

def _json_default(o):
    import numpy as np
    if isinstance(o, np.integer): return int(o)
    if isinstance(o, (np.floating, float)): return float(o)
    if isinstance(o, (np.ndarray, tuple, set)): return list(o.tolist() if hasattr(o, 'tolist') else o)
    if isinstance(o, Path): return str(o)
    if isinstance(o, np.bool_): return bool(o)
    if hasattr(o, 'asdict'): return o.asdict()          # a training Recipe
    raise TypeError(f'{type(o).__name__} is not JSON serialisable: {o!r}')

def write_json(path, obj):
    "`obj` as indented JSON, written to a temporary file and renamed (`fine_tuning_flm.core.atomic_write`)."
    from fine_tuning_flm.core import atomic_write
    with atomic_write(path, 'w') as fh: json.dump(obj, fh, indent=1, default=_json_default)

class Run:
    "The provenance of one run of a benchmark script: taken at the start, completed and written with the results."
    def __init__(self,
                 module:str, # the script's module, `__spec__.name` ('benchmarks.ranking')
                 argv=None, # its arguments (default `sys.argv[1:]`)
                 out=None, # the results file it will write: not counted as a change of the tree
                ):
        argv = sys.argv[1:] if argv is None else list(argv)
        self.t0, self.out = time.perf_counter(), out
        dirty = dirty_paths([out] if out else [])
        self.start = dict(git_commit=git_commit(), git_dirty=bool(dirty), dirty_paths=dirty[:50], command=command(module, argv),
                          argv=[str(x) for x in argv], date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
                          versions=versions(), load_average_start=_load(),
                          env={k: os.environ[k] for k in ('OMP_WAIT_POLICY', 'OMP_NUM_THREADS', 'FLM_DATA') if k in os.environ})

    def banner(self) -> str:
        s = self.start
        return (f"{s['command']}\n{s['date']}  commit {s['git_commit'][:10]}{' (dirty tree)' if s['git_dirty'] else ''}  load average "
                + ' '.join(f'{x:.2f}' for x in s['load_average_start']) + '  '
                + '  '.join(f'{k} {v}' for k, v in s['versions'].items() if v))

    def record(self) -> dict:
        "Every field of `FIELDS` (and a few more), as of now."
        return dict(regenerated=True, **self.start, host=host(), load_average_end=_load(), wall_seconds=time.perf_counter() - self.t0)

    def write(self, res:dict, path=None, record:dict|None=None) -> dict:
        "`res` with `provenance` set to `record` (default `record()`), written atomically to `path` (default: the `out` given at the start)."
        res['provenance'] = record or self.record()
        path = path or self.out
        if path: write_json(path, res)
        return res

# ---------------------------------------------------------------------------------------------------- files from before the helper
def _recorded(d:dict) -> dict:
    "The provenance fields an old file recorded itself, at its top level, in `run`, or in its last `runs` entry (null values skipped)."
    out = {}
    for src in [d, d.get('run') or {}, *(d.get('runs') or [])[-1:]]:
        if not isinstance(src, dict): continue
        for k in FIELDS:
            if src.get(k) is not None and k not in out: out[k] = src[k]
    return out

def not_regenerated(path, note:str='') -> dict:
    "The `provenance` of a results file written before this helper: `regenerated: false`, the commit that last changed it, what it recorded."
    rel = _rel(path)
    commit = _git('log', '-1', '--format=%H', '--', rel).strip() if rel else ''
    if not re.fullmatch('[0-9a-f]{40}', commit): raise RuntimeError(f"{path}: no commit in this repository's history changed it, so it has no results_commit")
    d = json.loads(Path(path).read_text())
    rec = {k: v for k, v in _recorded(d).items() if k != 'git_commit'}
    unknown = [k for k in FIELDS if k not in rec and k != 'git_commit']
    text = (f"This file predates benchmarks/provenance.py and was not regenerated with it. git_commit is {commit[:10]}, the commit that last "
            f"changed the file (results_commit), not necessarily the code it ran; the run's own commit and whether its tree was dirty are "
            f"unknown. Unknown fields: {', '.join(unknown) or 'none'}. ")
    if rec: text += f"Copied from what the file itself recorded (not checked): {', '.join(rec)}; a recorded command is in the old form (python benchmarks/<name>.py)."
    return dict(regenerated=False, results_commit=commit, git_commit=commit, unknown=unknown, **rec, provenance_note=(text + ' ' + note).strip())

def main(argv=None):
    p = argparse.ArgumentParser(description='Give results files written before this helper a provenance record that says so.')
    p.add_argument('--not-regenerated', nargs='+', required=True, metavar='FILE')
    p.add_argument('--note', default='', help='a sentence appended to every provenance_note')
    a = p.parse_args(argv)
    for f in a.not_regenerated:
        d = json.loads(Path(f).read_text())
        if 'provenance' in d:                # a run's record, or one made here before: its results_commit must not move
            print(f"{f}: already has a provenance record (regenerated={d['provenance'].get('regenerated')}); left as it is"); continue
        d['provenance'] = not_regenerated(f, a.note)
        write_json(f, d)
        print(f"{f}: results_commit {d['provenance']['results_commit'][:10]}, unknown {d['provenance']['unknown']}")

if __name__ == '__main__': main()
