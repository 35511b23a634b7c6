"""Where the language model pays (#23): next-item recommendation on Amazon "Industrial and Scientific" (UniSRec's own files,
RecBole's atomic format, `$FLM_DATA/amazon-scientific`), every system in one run, with the published rows beside them.

Protocol (the published rows'): leave-one-out per user as the files cut it (last item: test target, second-last: valid target);
full ranking over all 4,385 items; a user's history is NOT masked (RecBole's full-sort rule for sequential models); Recall@10/50
(one target: = hit rate) and NDCG@10/50. Everything is chosen on the valid rows (early stopping, EASE's lambda, the fine-tuning
mode); the test rows only report.

Systems:
- most-popular; EASE over each user's training items (lambda chosen on valid); content kNN on the frozen text vectors;
- RecBole's SASRec with UniSRec's baseline settings (`benchmarks.recbole_sasrec`, in the Python given by --recbole-python: RecBole
  needs pandas < 3; its exact error is recorded if it fails);
- ours (`fine_tuning_flm.sequential`, SEQ_RECIPE), per training seed: the order-aware tower over ID items (`FLM-seq ID`), over
  text items with no ID at all (`FLM-seq text (inductive)`), over both (`FLM-seq text+ID`); then, from each seed's inductive
  model, a joint stage in which the language model trains (each --modes), and its control (the same epochs, the language model
  frozen): fine-tuned vs frozen is paired seed by seed (`finetune.paired_gain`), the mode chosen on valid;
- new items: 20 % of the items held out with all their interactions (`hold_out_items`, split seed 0); users whose test target is
  one of them; inductive frozen (stage 1 + control) vs fine-tuned (the chosen mode), text+ID, content kNN.
Peak memory is this process's VmHWM. Run:
    python -m benchmarks.text_rich --recbole-python rbenv/bin/python --out benchmarks/results/text_rich.json
    python -m benchmarks.text_rich --quick --out /tmp/q.json      # a sample of users, few epochs, one seed (CI: tests/test_text_rich.py)
    # a shorter budget: --epochs 15 --joint-epochs 1 --id-seeds 1 --heldout-seeds 0 --recbole-epochs 5
"""
import argparse, json, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np, torch

from .common import peak_rss_gb, timed
from .provenance import Run

PUBLISHED = {   # full ranking on exactly this split, history not masked; from the papers' tables
    'SASRec (ID)': dict(R10=0.1080, N10=0.0553, R50=0.2042, N50=0.0760, source="UniSRec (Hou et al., KDD'22) Table 2"),
    'UniSRec, text only, inductive (BERT-base)': dict(R10=0.1188, N10=0.0641, R50=0.2394, N50=0.0903, source="UniSRec (KDD'22) Table 2"),
    'UniSRec, text + ID': dict(R10=0.1235, N10=0.0634, R50=0.2473, N50=0.0904, source="UniSRec (KDD'22) Table 2"),
    'VQ-Rec': dict(R10=0.1211, N10=0.0643, R50=0.2369, N50=0.0897, source="VQ-Rec (Hou et al., WWW'23) Table 2"),
    'MISSRec (CLIP text+image, ID, pre-trained)': dict(R10=0.1360, N10=0.0753, R50=0.2431, N50=0.0983, source='gimpong/MM23-MISSRec README'),
}
KEYS = ('R@10', 'N@10', 'R@50', 'N@50')

def subsample(trn, val, tst, n_users, seed=0):
    "The same three sides restricted to `n_users` users drawn with `seed` (the catalogue stays whole): for --quick."
    from fine_tuning_flm.sequential import Sequences
    keep = np.sort(np.random.default_rng(seed).choice(trn.n_users, n_users, replace=False))
    out = []
    for side in (trn, val, tst):
        s = side._like(side.ratings[np.isin(side.ratings.user.to_numpy(), keep)])
        seqs = side.sequences
        s.sequences = Sequences.from_lists([seqs[u] if u in set(keep.tolist()) else [] for u in range(seqs.n_users)])
        out.append(s)
    return out

def scored(model, val, tst, users_val=None, users_tst=None) -> dict:
    from fine_tuning_flm.sequential import evaluate_next_item
    return dict(valid=evaluate_next_item(model, val, users_val), test=evaluate_next_item(model, tst, users_tst))

def ease(trn, val, lams, decays=(1.0,)):
    "EASE with the lambda (and recency decay) of the best valid NDCG@10; the inverse is computed once per lambda."
    from fine_tuning_flm.sequential import EASENext, evaluate_next_item
    best = (-1, None)
    for l in lams:
        m = EASENext(l).fit(trn)
        for d in decays:
            m.decay = d; v = evaluate_next_item(m, val)['N@10']
            if v > best[0]: best = (v, (l, d, m.B))
    l, d, B = best[1]; m = EASENext(l, d); m.B = B
    return m, dict(lam=l, decay=d)

def recbole_start(a, data, out_dir):
    "RecBole's SASRec started in a process of its own (one thread), beside ours; `recbole_result` collects it."
    fn = Path(out_dir)/'recbole.json'
    cmd = [a.recbole_python, '-m', 'benchmarks.recbole_sasrec', '--data', str(data), '--name', a.name, '--out', str(fn), '--threads', '1',
           '--epochs', str(2 if a.quick else a.recbole_epochs), '--stopping-step', str(1 if a.quick else 5)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1]), cmd, fn, time.perf_counter()

def recbole_result(started) -> dict:
    "RecBole's result, or the exact error it failed with."
    proc, cmd, fn, t = started
    _, err = proc.communicate()
    if proc.returncode: return dict(system='RecBole SASRec', command=' '.join(cmd), error=(err.strip().splitlines() or ['?'])[-1][:2000], seconds=time.perf_counter() - t)
    res = json.loads(fn.read_text())
    return dict(system='RecBole SASRec', command=' '.join(cmd), valid=res['valid'], test=res['test'], fit_seconds=res['fit_seconds'],
                epochs_run=res['epochs_run'], versions=res['versions'], seeds=[res['seed']])

def ours(trn, val, recipe, text, vecs, seed, progress, tst=None, users_val=None, users_tst=None, **kw):
    "One of our models: trained (stage 1) and scored; returns (learner, row)."
    from fine_tuning_flm.sequential import next_item_learner, fit_next_item
    learn = next_item_learner(trn, val, recipe.replace(**kw), text=text, item_vectors=vecs, seed=seed)
    _, sec = timed(fit_next_item, learn, joint=False, progress=progress)
    kb = [c for c in learn.cbs if type(c).__name__ == 'KeepBest'][0]
    row = dict(seed=seed, fit_seconds=sec, best_epoch=kb.best_epoch, valid_ndcg10_monitor=kb.best, **scored(learn.model, val, tst, users_val, users_tst))
    return learn, row

def joint(base, trn, val, tst, recipe, mode, vecs, seed, progress, control=False, users_val=None, users_tst=None):
    "From a trained frozen-text learner `base`: the joint stage with the language model `mode` training (or its control)."
    from fine_tuning_flm.sequential import next_item_learner, fit_joint, warm_start
    learn = warm_start(next_item_learner(trn, val, recipe, text='frozen' if control else mode, item_vectors=vecs, seed=seed), base)
    t = time.perf_counter(); fit_joint(learn, control=control, progress=progress); sec = time.perf_counter() - t
    kb = [c for c in learn.cbs if type(c).__name__ == 'KeepBest'][0]
    rss = peak_rss_gb()
    return dict(seed=seed, mode=mode, control=control, joint_seconds=sec, seconds_per_joint_epoch=sec / max(recipe.joint.joint_epochs, 1),
                kept_epoch=kb.best_epoch, peak_rss_gb=rss, **scored(learn.model, val, tst, users_val, users_tst))

def summary(rows) -> dict:
    "Mean and std over seeds of each metric, valid and test."
    out = {}
    for part in ('valid', 'test'):
        vals = {k: [r[part][k] for r in rows] for k in KEYS}
        out[part] = {k: float(np.mean(v)) for k, v in vals.items()}
        out[part + '_std'] = {k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in vals.items()}
    return out

def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', help='the folder of the atomic files (default $FLM_DATA/amazon-scientific)')
    p.add_argument('--name', default='Scientific')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--modes', nargs='+', default=['top_k'], help="fine-tuning modes tried (top_k: the recipe's top layer); the one with the best mean valid NDCG@10 is reported")
    p.add_argument('--heldout-seeds', type=int, nargs='+', default=[0, 1, 2], help='training seeds of the new-items part (one split of the items)')
    p.add_argument('--recbole-epochs', type=int, default=30)
    p.add_argument('--epochs', type=int, help="at most this many stage-1 epochs (default: the recipe's, with early stopping on valid)")
    p.add_argument('--joint-epochs', type=int, help="epochs of the joint stage and of its control (default: the recipe's)")
    p.add_argument('--id-seeds', type=int, help='train the ID and text+ID models (and the blend) on the first N seeds only (default: every seed)')
    p.add_argument('--lams', type=float, nargs='+', default=[50, 100, 200, 400, 800], help="EASE's lambdas, chosen on valid")
    p.add_argument('--recbole-python', default=sys.executable, help='the Python that runs RecBole (it needs pandas < 3)')
    p.add_argument('--no-recbole', action='store_true'); p.add_argument('--no-heldout', action='store_true')
    p.add_argument('--quick', action='store_true', help='a sample of 1,500 users, 3 epochs, one seed, no language-model fine-tuning (tests/test_sequential.py covers it on a small catalogue)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--progress', action='store_true')
    p.add_argument('--out')
    return p.parse_args(argv)

def setup(a):
    from fine_tuning_flm.core import data_dir
    from fine_tuning_flm.embeddings import TextEncoder
    from fine_tuning_flm.sequential import load_recbole, SEQ_RECIPE
    data = Path(a.data) if a.data else data_dir()/'amazon-scientific'
    (trn, val, tst), t_load = timed(load_recbole, data, a.name)
    if a.quick:
        trn, val, tst = subsample(trn, val, tst, 1500)
        a.seeds, a.modes, a.lams, a.heldout_seeds = a.seeds[:1], [], a.lams[:1], a.heldout_seeds[:1]
    recipe = SEQ_RECIPE.replace(epochs=3, joint_epochs=1, early_stop=None) if a.quick else SEQ_RECIPE
    if a.epochs: recipe = recipe.replace(epochs=a.epochs)
    if a.joint_epochs: recipe = recipe.replace(joint_epochs=a.joint_epochs)
    vecs, t_enc = timed(TextEncoder(max_length=96).encode, trn.items.text.tolist(), cache=True, progress=False)
    return data, trn, val, tst, recipe, vecs, dict(load_seconds=t_load, encode_seconds=t_enc, n_users=int(trn.n_users), n_items=int(trn.n_items),
                                                 train_interactions=int(len(trn.sequences.items)), quick=a.quick)

BLEND = 'FLM-seq text + text+ID + EASE (blend, weights on valid)'

def part_warm(a, trn, val, tst, recipe, vecs, ease_model, log) -> tuple:
    "Our three item sides per seed, then the joint stages from each seed's inductive model."
    from fine_tuning_flm.sequential import Blend
    rows, bases = {'FLM-seq ID': [], 'FLM-seq text (inductive)': [], 'FLM-seq text+ID': [], BLEND: []}, {}
    for j, s in enumerate(a.seeds):
        made = {}
        for name, items in (('FLM-seq ID', 'id'), ('FLM-seq text (inductive)', 'text'), ('FLM-seq text+ID', 'text+id')):
            if items != 'text' and a.id_seeds is not None and j >= a.id_seeds: continue
            learn, row = ours(trn, val, recipe, 'frozen', vecs, s, a.progress, tst, items=items)
            rows[name].append(row); made[items] = learn.model
            log(f"{name} seed {s}: valid N@10 {row['valid']['N@10']:.4f} test N@10 {row['test']['N@10']:.4f} ({row['fit_seconds']:.0f} s)")
            if items == 'text': bases[s] = learn
        if 'text+id' not in made: continue
        b, sec = timed(Blend({'text': made['text'], 'text+id': made['text+id'], 'EASE': ease_model}).fit_weights, val)
        rows[BLEND].append(dict(seed=s, weights=b.weights, weights_seconds=sec, **scored(b, val, tst)))
        log(f"{BLEND} seed {s}: weights {b.weights} test N@10 {rows[BLEND][-1]['test']['N@10']:.4f}")
    runs = []
    for s in a.seeds:
        for mode in a.modes + ['control']:
            r = joint(bases[s], trn, val, tst, recipe.replace(items='text'), 'frozen' if mode == 'control' else mode, vecs, s, a.progress, control=mode == 'control')
            r['mode'] = mode; runs.append(r)
            log(f"joint {mode} seed {s}: valid N@10 {r['valid']['N@10']:.4f} test N@10 {r['test']['N@10']:.4f} ({r['seconds_per_joint_epoch']:.0f} s/epoch, {r['peak_rss_gb']:.2f} GB)")
    return rows, runs, bases

def choose_mode(runs, modes) -> dict:
    "The fine-tuning mode with the best mean valid NDCG@10, and its gain over the control, paired seed by seed, on valid and test."
    from fine_tuning_flm.finetune import paired_gain
    by = lambda m, part: [r[part]['N@10'] for r in sorted((r for r in runs if r['mode'] == m), key=lambda r: r['seed'])]
    if not modes: return dict(chosen=None, why='no fine-tuning mode was run')
    valid = {m: float(np.mean(by(m, 'valid'))) for m in modes}
    best = max(valid, key=valid.get)
    out = dict(chosen=best, valid_ndcg10_by_mode=valid, why='the best mean NDCG@10 on the valid rows')
    if len(by(best, 'test')) >= 2:
        out['test_vs_control'] = paired_gain(by(best, 'test'), by('control', 'test'))
        out['valid_vs_control'] = paired_gain(by(best, 'valid'), by('control', 'valid'))
    return out

def part_heldout(a, trn, val, tst, recipe, vecs, mode, log) -> dict:
    "New items: inductive frozen (+ control) vs fine-tuned, text+ID and content kNN, per seed, on one split of the items."
    from fine_tuning_flm.sequential import hold_out_items, ContentKNNNext
    htrn, hval, htst, held = hold_out_items(trn, val, tst, pct=0.2, seed=0)
    res = dict(held_items=len(held), valid_users=len(hval), test_users=len(htst), systems={})
    res['systems']['content-kNN'] = [dict(seed=None, **scored(ContentKNNNext(vecs), hval, htst))]
    for s in a.heldout_seeds:
        base, row = ours(htrn, hval, recipe, 'frozen', vecs, s, a.progress, htst, items='text')
        res['systems'].setdefault('FLM-seq text (inductive), stage 1', []).append(row)
        if s == a.heldout_seeds[0]:            # text+ID once: its unseen items have no ID part, and it ranks them last
            res['systems'].setdefault('FLM-seq text+ID', []).append(ours(htrn, hval, recipe, 'frozen', vecs, s, a.progress, htst, items='text+id')[1])
        for m, ctl in ((mode, False), ('frozen', True)) if mode else (('frozen', True),):
            r = joint(base, htrn, hval, htst, recipe.replace(items='text'), m, vecs, s, a.progress, control=ctl)
            res['systems'].setdefault('FLM-seq text, control (LM frozen)' if ctl else f'FLM-seq text, LM fine-tuned ({m})', []).append(r)
        log(f"held-out items, seed {s}: " + ', '.join(f"{k} {v[-1]['test']['N@10']:.4f}" for k, v in res['systems'].items()))
    return res

def targets(res) -> dict:
    "The issue's targets, read off the results."
    sy, t = res['systems'], {}
    ours_ = {k: v for k, v in sy.items() if k.startswith('FLM-seq') and 'test' in v}
    best = max(ours_, key=lambda k: ours_[k]['valid']['N@10'])                    # the best of ours, chosen on valid
    t['best_flm'] = dict(system=best, test_N10=ours_[best]['test']['N@10'], test_R10=ours_[best]['test']['R@10'], limit_N10=0.076, limit_R10=0.136,
                         met=ours_[best]['test']['N@10'] >= 0.076 and ours_[best]['test']['R@10'] >= 0.136)
    ind = sy['FLM-seq text (inductive)']['test']['N@10']
    t['inductive'] = dict(test_N10=ind, limit=0.0641, met=ind >= 0.0641)
    rb = sy.get('RecBole SASRec', {})
    t['above_recbole_sasrec'] = dict(ours=ours_[best]['test']['N@10'], recbole=rb.get('test', {}).get('N@10'),
                                     met=None if 'test' not in rb else ours_[best]['test']['N@10'] > rb['test']['N@10'])
    ft = res['finetune'].get('test_vs_control')
    if ft: t['finetune_vs_frozen'] = dict(**ft, limit_rel=0.10, met=ft['rel_gain'] >= 0.10 and ft['mean_diff'] > 2 * ft['std_diff'])
    h = res.get('heldout')
    if h:
        m = lambda k: float(np.mean([r['test']['N@10'] for r in h['systems'][k]]))
        ftk = next((k for k in h['systems'] if 'fine-tuned' in k), None)
        fz, knn = m('FLM-seq text, control (LM frozen)'), m('content-kNN')
        f = m(ftk) if ftk else None
        t['heldout'] = dict(frozen=fz, fine_tuned=f, content_knn=knn, rel_gain=None if f is None else f / fz - 1, limit_rel=0.15,
                            met=None if f is None else (f >= 1.15 * fz and min(f, fz) > knn))
    t['peak_rss'] = dict(gb=res['peak_rss_gb'], limit=8, met=res['peak_rss_gb'] < 8)
    t['wall'] = dict(minutes=res['wall_minutes'], limit=60, met=res['wall_minutes'] <= 60)
    return t

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    a = parse(argv); torch.set_num_threads(a.threads)
    run = Run(__spec__.name, argv, out=a.out); t0 = time.perf_counter()
    log = lambda s: print(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {s}", flush=True)
    log(run.banner())
    data, trn, val, tst, recipe, vecs, info = setup(a)
    from fine_tuning_flm.sequential import MostPopularNext, ContentKNNNext
    sy = {'most-popular': scored(MostPopularNext().fit(trn), val, tst), 'content-kNN (frozen MiniLM)': scored(ContentKNNNext(vecs), val, tst)}
    tmp = tempfile.TemporaryDirectory(); rb = None if a.no_recbole else recbole_start(a, data, tmp.name)
    (e, chosen), sec = timed(ease, trn, val, a.lams); sy['EASE'] = dict(chosen_on_valid=chosen, fit_seconds=sec, **scored(e, val, tst))
    (er, chosen), sec = timed(ease, trn, val, [chosen['lam']], (1.0, 0.7, 0.5, 0.3)); sy['EASE, recent items weighted more'] = dict(chosen_on_valid=chosen, fit_seconds=sec, **scored(er, val, tst))
    log(', '.join(f"{k} test N@10 {v['test']['N@10']:.4f}" for k, v in sy.items()))
    rows, runs, _ = part_warm(a, trn, val, tst, recipe, vecs, er, log)
    for k, v in rows.items(): sy[k] = dict(seeds=[r['seed'] for r in v], per_seed=v, fit_seconds=float(np.mean([r.get('fit_seconds', 0) for r in v])), **summary(v))
    ft = choose_mode(runs, a.modes)
    chosen = [r for r in runs if r['mode'] == ft['chosen']]
    if chosen: sy[f"FLM-seq text, LM fine-tuned ({ft['chosen']})"] = dict(seeds=[r['seed'] for r in chosen], per_seed=chosen, **summary(chosen))
    ctl = [r for r in runs if r['mode'] == 'control']
    sy['FLM-seq text, control (LM frozen, same budget)'] = dict(seeds=[r['seed'] for r in ctl], per_seed=ctl, **summary(ctl))
    res = dict(data=info | dict(folder=str(data)), protocol='full ranking over all items, history not masked (RecBole full sort, sequential)',
               recipe=recipe.asdict(), systems=sy, finetune=ft, joint_runs=runs, published=PUBLISHED)
    if not a.no_heldout: res['heldout'] = part_heldout(a, trn, val, tst, recipe, vecs, ft['chosen'], log)
    if rb is not None:
        sy['RecBole SASRec'] = recbole_result(rb); tmp.cleanup()
        log(f"RecBole SASRec: {sy['RecBole SASRec'].get('test', sy['RecBole SASRec'].get('error'))}")
    res['peak_rss_gb'], res['wall_minutes'] = peak_rss_gb(), (time.perf_counter() - t0) / 60
    res['targets'] = targets(res)
    for k, v in res['targets'].items(): log(f"target {k}: {v}")
    run.write(res)
    return res

if __name__ == '__main__': main()
