#!/usr/bin/env python
"""Run notebooks top to bottom and save their outputs in place, the way `nbdev_test` runs them.

Cells flagged with a `tst_flags` directive (`#| slow`, `#| gpu`) are skipped unless named in `--flags`,
and so are `nbdev_export()` cells. A skipped cell keeps the outputs it already had, so a slow cell's
committed output stays until someone re-runs it with `--flags slow`.
Unlike `nbdev_test`, `IN_TEST` is not set: default cells run at their full, documented size.

    python tools/run_nb.py nbs/03_data.ipynb                # default cells
    python tools/run_nb.py nbs/08_learner.ipynb --flags slow  # also the full-size runs
"""
import argparse, re, sys, time
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from fastcore.xtras import working_directory
from nbdev.config import get_config

def _directives(src):
    "The `#| flag` words at the top of a cell."
    out = set()
    for line in src.splitlines():
        m = re.match(r'^\s*#\s*\|\s*(.*)$', line)
        if not m: break
        out.update(m.group(1).split())
    return out

_QUIET_BARS = """
import fastprogress.fastprogress as _fp
_pb_init = _fp.ProgressBar.__init__
def _quiet_init(self, gen, total=None, display=True, leave=True, parent=None, master=None, txt_len=60):
    self.cols, self.length, self.max_len, self.prefix = 100, 40, 0, ''
    _pb_init(self, gen, total, display, leave, parent, master)
_fp.ConsoleProgressBar.__init__ = _quiet_init
for _m in ('on_update', 'on_iter_end', 'on_interrupt'): setattr(_fp.ConsoleProgressBar, _m, lambda self, *a, **k: None)
del _m, _quiet_init
"""

def run_nb(fn, flags=(), timing=False, save_on_error=False):
    skip = set(get_config().tst_flags.split()) - set(flags)
    fn = Path(fn).absolute()
    nb = read_nb(fn)
    def _skip(cell):
        if cell.cell_type != 'code' or 'nbdev_export'+'(' in cell.source: return True
        return bool(_directives(cell.source) & skip)
    def _clear(cell):
        if not _skip(cell): cell.outputs = []
    for c in nb.cells: _clear(c)
    start = time.time(); times = []
    sh = CaptureShell(fn, mpl_format='png')
    # execnb is not a Jupyter kernel, so fastprogress draws console bars: '\r'-redrawn lines that would be saved as
    # junk in the outputs. Keep what a reader needs (fastai's epoch table, written through the master bar) and drop the bars.
    sh.run(_QUIET_BARS)
    def _pre(cell):
        if _skip(cell): return True
        times.append([time.time(), cell.source.splitlines()[0][:70] if cell.source else '']); return False
    def _post(cell): times[-1][0] = time.time() - times[-1][0]
    try:
        with working_directory(fn.parent): sh.run_all(nb, exc_stop=True, preproc=_pre, postproc=_post)
    except Exception:
        sys.stderr.write(sh.prettytb(fname=fn) + '\n')
        if save_on_error: write_nb(nb, fn)
        sys.exit(f"{fn.name}: failed, outputs {'saved up to the failing cell' if save_on_error else 'not saved'}")
    write_nb(nb, fn)
    print(f'{fn.name}: {time.time()-start:.0f}s')
    if timing:
        for t, src in sorted(times, reverse=True)[:8]: print(f'  {t:6.1f}s  {src}')

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('nbs', nargs='+'); p.add_argument('--flags', default='', help='space-separated flags to run too')
    p.add_argument('--timing', action='store_true', help='print the slowest cells')
    p.add_argument('--save-on-error', action='store_true', help='on a failure, save the outputs so far (to inspect them)')
    a = p.parse_args()
    for f in a.nbs: run_nb(f, a.flags.split(), a.timing, a.save_on_error)
