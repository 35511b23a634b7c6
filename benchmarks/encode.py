"""Encoding speed: sentence-transformers' `encode` against `TextEncoder.encode` on the same texts.

Encodes the same ml-latest-small item texts (title, genres, tags) with both, alternating them round by round in
one process so that both see the same machine load, and prints texts/s for each and their ratio. Then:
the reduced precisions (bf16 on a CPU, fp16 and bf16 on CUDA; `int8` on request: texts/s against fp32, the
minimum cosine of their vectors to the fp32 ones over all texts, and how many of each text's 10 nearest
fp32 neighbours they keep), and the speed-up of a cached second `encode(..., cache=True)` over the first.

`int8` is not a `TextEncoder` precision: it is the study `04_embeddings` summarises. `int8_linears` below swaps
every `nn.Linear` of the model, for a `with` block, for a layer with int8 weights (one scale per output row)
and int8 activations (one scale per token, the "vector-wise" quantization of LLM.int8()), multiplied by
`torch._int_mm` into int32. PyTorch's `quantize_dynamic` takes one activation scale for a whole batch, and the
few tokens with huge activations that transformers are known for leave the others little of int8's range.
With `int8`, fp32 and int8 are also timed on one thread, where int8's faster products are not hidden by
float32's better use of several cores.

    python -m benchmarks.encode                    # all 9,742 texts, batch 32, 3 rounds
    python -m benchmarks.encode --n 3000 --rounds 3 --precisions bf16,int8 --out benchmarks/results/encode.json
    python -m benchmarks.encode --precisions '' --batch-size 64    # fp32 against sentence-transformers only

Machine load skews timings: the load average is printed before and after; re-run when it is high.
"""
import argparse, contextlib, os, platform, statistics, sys, tempfile, time, warnings

import torch
from torch import nn

from benchmarks.provenance import Run


class _Int8Linear(nn.Module):
    "Inference stand-in for an `nn.Linear`: int8 weights (a scale per output), int8 activations (a scale per token), int32 products."
    def __init__(self, lin:nn.Linear):
        super().__init__()
        w = lin.weight.detach().float()
        self.sw = w.abs().amax(1).clamp(min=1e-8) / 127
        self.wq = (w / self.sw[:, None]).round_().clamp_(-127, 127).to(torch.int8).t()
        self.b = None if lin.bias is None else lin.bias.detach().float()
    def forward(self, x):
        shape = x.shape; x = x.reshape(-1, shape[-1]).float()
        sx = x.abs().amax(1, keepdim=True).clamp(min=1e-8) / 127
        y = torch._int_mm((x / sx).round_().to(torch.int8), self.wq).float().mul_(sx).mul_(self.sw)
        if self.b is not None: y.add_(self.b)
        return y.reshape(*shape[:-1], -1)


@contextlib.contextmanager
def int8_linears(model:nn.Module):
    "Inside the block, every `nn.Linear` of `model` is an `_Int8Linear` made from its current weights."
    swapped = []
    try:
        for mod in list(model.modules()):
            for name, child in list(mod.named_children()):
                if isinstance(child, nn.Linear): setattr(mod, name, _Int8Linear(child)); swapped.append((mod, name, child))
        yield
    finally:
        for mod, name, child in swapped: setattr(mod, name, child)


def _neighbours_kept(v, ref, k=10):
    "Per text: the share of its `k` nearest neighbours under `ref` that are also among its `k` nearest under `v`."
    top = lambda x: (x @ x.T).fill_diagonal_(-2).topk(k, dim=1).indices
    a, b = top(v.float()), top(ref.float())
    return (a[:, :, None] == b[:, None, :]).any(-1).float().mean(1)


def _rate(f, n):
    "texts/s of one call `f()`, and its result."
    start = time.perf_counter(); out = f(); dt = time.perf_counter() - start
    return n / dt, out


def _int8(enc, texts):
    with int8_linears(enc.model): return enc.encode(texts, progress=False)


def _cpu() -> dict:
    "The CPU's model name and the instruction-set flags that decide bf16 and int8 speed (Linux; empty elsewhere)."
    try: info = open('/proc/cpuinfo').read()
    except OSError: return {}
    name = next((l.split(':', 1)[1].strip() for l in info.splitlines() if l.startswith('model name')), platform.processor())
    flags = next((l.split(':', 1)[1].split() for l in info.splitlines() if l.startswith('flags')), [])
    return dict(model=name, flags=sorted(f for f in set(flags) if 'bf16' in f or 'vnni' in f or f.startswith('amx')))


def _load():
    return ' '.join(f'{x:.1f}' for x in os.getloadavg()) if hasattr(os, 'getloadavg') else 'n/a'


def main(argv=None):
    argv = [str(x) for x in (sys.argv[1:] if argv is None else argv)]
    p = argparse.ArgumentParser(prog='python -m benchmarks.encode', description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=None, help='number of texts (default: all 9,742; at least 3,000 for the figures in the issue)')
    p.add_argument('--batch-size', type=int, default=32, help='texts per batch, for both encoders (default 32)')
    p.add_argument('--rounds', type=int, default=3, help='timed rounds of each encoder, alternating (default 3)')
    p.add_argument('--max-length', type=int, default=64, help='token limit, for both encoders (default 64)')
    p.add_argument('--dataset', default='ml-latest-small', help="MovieLens dataset whose item texts are encoded")
    p.add_argument('--precisions', default=None,
                   help="comma-separated extra TextEncoder precisions to time (default: 'bf16' on a CPU, 'fp16,bf16' on CUDA; '' for none); 'int8' times this script's int8_linears")
    p.add_argument('--device', default=None, help="'cpu' or 'cuda' (default: `default_device()`)")
    p.add_argument('--out', default=None, help='also write every number here as JSON')
    a = p.parse_args(argv)
    if a.rounds < 1: p.error(f'--rounds must be >= 1, got {a.rounds}')
    if a.batch_size < 1: p.error(f'--batch-size must be >= 1, got {a.batch_size}')

    from fine_tuning_flm.core import default_device
    from fine_tuning_flm.data import load_movielens
    from fine_tuning_flm.embeddings import TextEncoder, bundled_model_path
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as tlog
    tlog.disable_progress_bar()                       # sentence-transformers' own model load

    prov = Run(__spec__.name, argv, out=a.out)
    print(prov.banner(), flush=True)
    texts = load_movielens(a.dataset).items.text.tolist()
    if a.n is not None:
        if not 1 <= a.n <= len(texts): p.error(f'--n must be in [1, {len(texts)}] for {a.dataset}, got {a.n}')
        texts = texts[:a.n]
    n, dev = len(texts), default_device(a.device)
    print(f'{n:,} {a.dataset} item texts, batch {a.batch_size}, max_length {a.max_length}, {a.rounds} rounds, '
          f'device {dev}, torch {torch.__version__} ({torch.get_num_threads()} threads), {platform.processor() or platform.machine()}')
    load_before = _load()                             # now, before any encoder runs (not when the results are assembled)
    print(f'load average before: {load_before}; CPU {_cpu()}')

    st = SentenceTransformer(str(bundled_model_path()), device=str(dev))
    st.max_seq_length = a.max_length
    enc = TextEncoder(max_length=a.max_length, batch_size=a.batch_size, device=dev)
    encs = {'sentence-transformers': lambda: st.encode(texts, batch_size=a.batch_size, normalize_embeddings=True, convert_to_tensor=True).cpu(),
            'TextEncoder fp32': lambda: enc.encode(texts, progress=False)}
    precs = a.precisions if a.precisions is not None else ('fp16,bf16' if dev.type == 'cuda' else 'bf16')
    extra = {}
    for prec in filter(None, (x.strip() for x in precs.split(','))):
        if prec == 'int8':      # not a TextEncoder precision (04_embeddings explains why): int8_linears above
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
    res = dict(command=prov.start['command'], n=n,
               batch_size=a.batch_size, max_length=a.max_length, device=str(dev), torch=torch.__version__,
               threads=torch.get_num_threads(), cpu=_cpu(), load_before=load_before, rounds=rates)
    med = {k: statistics.median(v) for k, v in rates.items()}

    ref, ours = out['sentence-transformers'].float(), out['TextEncoder fp32']
    dist = (1 - (ref * ours).sum(1)).max().item()
    res.update(median=med, ratio_vs_st=med["TextEncoder fp32"]/med["sentence-transformers"], max_cos_dist_vs_st=dist, precisions={})
    print(f'\nmedian texts/s over {a.rounds} rounds:')
    for k, v in med.items(): print(f'  {k:21s} {v:8,.0f}  (rounds: {", ".join(f"{x:,.0f}" for x in rates[k])})')
    print(f'TextEncoder fp32 / sentence-transformers: {med["TextEncoder fp32"]/med["sentence-transformers"]:.2f}x '
          f'(max cosine distance between their vectors {dist:.1e})')
    for prec in extra:
        v = out[f'TextEncoder {prec}'].float()
        cos = (v * ours).sum(1)
        kept = _neighbours_kept(v, ours) if n > 10 else torch.ones(n)
        res['precisions'][prec] = dict(ratio_vs_fp32=med[f"TextEncoder {prec}"]/med["TextEncoder fp32"], min_cos=cos.min().item(), mean_cos=cos.mean().item(),
                                       neighbours_kept=kept.mean().item(), share_keeping_8_of_10=(kept >= 0.8).float().mean().item())
        print(f'TextEncoder {prec} / fp32: {med[f"TextEncoder {prec}"]/med["TextEncoder fp32"]:.2f}x '
              f'(min cosine to the fp32 vectors {cos.min().item():.4f} over all {n:,} texts, mean {cos.mean().item():.5f}; '
              f'{kept.mean().item():.1%} of the 10 nearest fp32 neighbours kept, {(kept >= 0.8).float().mean().item():.1%} of texts keep 8 or more)')
    if 'int8' in extra and dev.type == 'cpu':
        threads, one = torch.get_num_threads(), texts[:min(n, 1000)]
        torch.set_num_threads(1)
        t32, t8 = [], []
        for _ in range(a.rounds):                     # alternating, as above
            t32.append(_rate(lambda: enc.encode(one, progress=False), len(one))[0]); t8.append(_rate(lambda: _int8(extra['int8'], one), len(one))[0])
        torch.set_num_threads(threads)
        res['int8_one_thread'] = dict(n=len(one), fp32=statistics.median(t32), int8=statistics.median(t8), ratio=statistics.median(t8)/statistics.median(t32))
        print(f"one thread, {len(one):,} texts: fp32 {res['int8_one_thread']['fp32']:,.0f}/s, int8 {res['int8_one_thread']['int8']:,.0f}/s: int8 is {res['int8_one_thread']['ratio']:.2f}x fp32")

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
    prov.write(res, a.out)
    return med


if __name__ == '__main__': main()
