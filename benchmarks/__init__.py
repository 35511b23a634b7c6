"""The benchmark scripts of fine_tuning_flm, run from the repository root as modules:

    python -m benchmarks.ranking --quick
    python -m benchmarks.ranking --out benchmarks/results/ranking.json

Each script writes its numbers to `benchmarks/results/<name>.json` through `benchmarks.provenance` (commit, dirty
tree, command line, versions, host, load, wall time); `benchmarks.common` holds what several scripts share."""
