#!/usr/bin/env python
"""Encoding speed: sentence-transformers' `encode` against `TextEncoder.encode` on the same texts.

Encodes the same ml-latest-small item texts (title, genres, tags) with both, alternating them round by round in
one process so that both see the same machine load, and prints texts/s for each and their ratio. Then:
the reduced precisions (bf16 on a CPU, fp16 and bf16 on CUDA: texts/s against fp32 and the minimum
cosine of their vectors to the fp32 ones over all texts), and the speed-up of a cached second
`encode(..., cache=True)` over the first.

    python benchmarks/encode.py                    # all 9,742 texts, batch 32, 3 rounds
    python benchmarks/encode.py --n 3000 --rounds 5
    python benchmarks/encode.py --precisions '' --batch-size 64    # fp32 against sentence-transformers only

Machine load skews timings: the load average is printed before and after; re-run when it is high.
"""
import argparse, json, os, platform, statistics, sys, tempfile, time, warnings

import torch


def _rate(f, n):
    "texts/s of one call `f()`, and its result."
    start = time.perf_counter(); out = f(); dt = time.perf_counter() - start
    return n / dt, out


def _int8(enc, texts):
    from fine_tuning_flm.embeddings import int8_linears
    with int8_linears(enc.model): return enc.encode(texts, progress=False)


def _load():
    return ' '.join(f'{x:.1f}' for x in os.getloadavg()) if hasattr(os, 'getloadavg') else 'n/a'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=None, help='number of texts (default: all 9,742; at least 3,000 for the figures in the issue)')
    p.add_argument('--batch-size', type=int, default=32, help='texts per batch, for both encoders (default 32)')
    p.add_argument('--rounds', type=int, default=3, help='timed rounds of each encoder, alternating (default 3)')
    p.add_argument('--max-length', type=int, default=64, help='token limit, for both encoders (default 64)')
    p.add_argument('--dataset', default='ml-latest-small', help="MovieLens dataset whose item texts are encoded")
    p.add_argument('--precisions', default=None,
                   help="comma-separated extra TextEncoder precisions to time (default: 'bf16' on a CPU, 'fp16,bf16' on CUDA; '' for none); 'int8' times 02's int8_linears")
    p.add_argument('--device', default=None, help="'cpu' or 'cuda' (default: `default_device()`)")
    p.add_argument('--out', default=None, help='also write every number here as JSON')
    a = p.parse_args(argv)
    if a.rounds < 1: p.error(f'--rounds must be >= 1, got {a.rounds}')
    if a.batch_size < 1: p.error(f'--batch-size must be >= 1, got {a.batch_size}')

    from fine_tuning_flm.core import default_device, atomic_write
    from fine_tuning_flm.data import load_movielens
    from fine_tuning_flm.embeddings import TextEncoder, bundled_model_path
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as tlog
    tlog.disable_progress_bar()                       # sentence-transformers' own model load

    texts = load_movielens(a.dataset).items.text.tolist()
    if a.n is not None:
        if not 1 <= a.n <= len(texts): p.error(f'--n must be in [1, {len(texts)}] for {a.dataset}, got {a.n}')
        texts = texts[:a.n]
    n, dev = len(texts), default_device(a.device)
    print(f'{n:,} {a.dataset} item texts, batch {a.batch_size}, max_length {a.max_length}, {a.rounds} rounds, '
          f'device {dev}, torch {torch.__version__} ({torch.get_num_threads()} threads), {platform.processor() or platform.machine()}')
    print(f'load average before: {_load()}')

    st = SentenceTransformer(str(bundled_model_path()), device=str(dev))
    st.max_seq_length = a.max_length
    enc = TextEncoder(max_length=a.max_length, batch_size=a.batch_size, device=dev)
    encs = {'sentence-transformers': lambda: st.encode(texts, batch_size=a.batch_size, normalize_embeddings=True, convert_to_tensor=True).cpu(),
            'TextEncoder fp32': lambda: enc.encode(texts, progress=False)}
    precs = a.precisions if a.precisions is not None else ('fp16,bf16' if dev.type == 'cuda' else 'bf16')
    extra = {}
    for prec in filter(None, (x.strip() for x in precs.split(','))):
        if prec == 'int8':      # not a TextEncoder precision (02_embeddings explains why): the int8_linears tool
            extra[prec] = TextEncoder(max_length=a.max_length, batch_size=a.batch_size, device=dev)
            encs['TextEncoder int8'] = (lambda e: lambda: _int8(e, texts))(extra[prec])
            continue
        extra[prec] = TextEncoder(max_length=a.max_length, batch_size=a.batch_size, device=dev, precision=prec)
        encs[f'TextEncoder {prec}'] = (lambda e: lambda: e.encode(texts, progress=False))(extra[prec])
    warm = texts[:4 * a.batch_size]                   # warm-up: first-call allocations, kernel choice
    st.encode(warm, batch_size=a.batch_size)
    for k, e in [('fp32', enc), *extra.items()]: _int8(e, warm) if k == 'int8' else e.encode(warm)

    rates, out = {k: [] for k in encs}, {}
    for r in range(a.rounds):
        for k, f in encs.items():
            rate, out[k] = _rate(f, n)
            rates[k].append(rate)
        print(f'round {r+1}: ' + ', '.join(f'{k} {v[-1]:,.0f}/s' for k, v in rates.items()))
    res = dict(command='python benchmarks/encode.py ' + ' '.join(argv if argv is not None else sys.argv[1:]), n=n,
               batch_size=a.batch_size, max_length=a.max_length, device=str(dev), torch=torch.__version__,
               threads=torch.get_num_threads(), load_before=_load(), rounds=rates)
    med = {k: statistics.median(v) for k, v in rates.items()}

    ref, ours = out['sentence-transformers'].float(), out['TextEncoder fp32']
    dist = (1 - (ref * ours).sum(1)).max().item()
    res.update(median=med, ratio_vs_st=med["TextEncoder fp32"]/med["sentence-transformers"], max_cos_dist_vs_st=dist, precisions={})
    print(f'\nmedian texts/s over {a.rounds} rounds:')
    for k, v in med.items(): print(f'  {k:21s} {v:8,.0f}  (rounds: {", ".join(f"{x:,.0f}" for x in rates[k])})')
    print(f'TextEncoder fp32 / sentence-transformers: {med["TextEncoder fp32"]/med["sentence-transformers"]:.2f}x '
          f'(max cosine distance between their vectors {dist:.1e})')
    for prec in extra:
        cos = (out[f'TextEncoder {prec}'] * ours).sum(1)
        res['precisions'][prec] = dict(ratio_vs_fp32=med[f"TextEncoder {prec}"]/med["TextEncoder fp32"], min_cos=cos.min().item(), mean_cos=cos.mean().item())
        print(f'TextEncoder {prec} / fp32: {med[f"TextEncoder {prec}"]/med["TextEncoder fp32"]:.2f}x '
              f'(min cosine to the fp32 vectors {cos.min().item():.4f} over all {n:,} texts, mean {cos.mean().item():.5f})')

    old_cache = os.environ.get('FLM_CACHE')
    with tempfile.TemporaryDirectory() as d:
        os.environ['FLM_CACHE'] = d                   # an empty cache of our own
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter('always')
            t_first, a1 = _rate(lambda: enc.encode(texts, cache=True, progress=False), 1)
            t_second, a2 = _rate(lambda: enc.encode(texts, cache=True, progress=False), 1)
        bad = [str(w.message) for w in ws if 'embedding cache' in str(w.message)]
        assert not bad, f'the cache misbehaved: {bad}'
        assert torch.equal(a1, a2), 'cached vectors differ from the first encode'
        print(f'cache: first encode(cache=True) {1/t_first:.2f}s, second {1/t_second:.3f}s: {t_second/t_first:.0f}x faster')
        res['cache'] = dict(first_s=1/t_first, second_s=1/t_second, speedup=t_second/t_first)
    if old_cache is None: del os.environ['FLM_CACHE']
    else: os.environ['FLM_CACHE'] = old_cache
    print(f'load average after: {_load()}')
    res['load_after'] = _load()
    if a.out:
        with atomic_write(a.out, 'w') as fh: json.dump(res, fh, indent=1)
    return med


if __name__ == '__main__': main()
