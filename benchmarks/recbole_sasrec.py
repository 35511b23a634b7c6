"""RecBole's SASRec on RecBole atomic sequence files, with UniSRec's baseline settings (its props: hidden 64, inner 256,
2 layers, 2 heads, dropout 0.5/0.5, CE loss over the full catalogue, lr 1e-3, train batch 2048, max 50 items, early stopping
on valid NDCG@10): the peer `benchmarks.text_rich` runs in a process of its own and reads back as JSON.

    python -m benchmarks.recbole_sasrec --data FOLDER --name Scientific [--epochs 60] [--stopping-step 10] [--out result.json]

RecBole 1.2.1 does not run beside this project's pins as they are: `recbole.quick_start` imports ray, which needs
`pkg_resources` (gone from setuptools >= 81), its `Config` assigns `np.float_` (gone from NumPy 2), and its dataset code fails
on pandas 3. This script uses RecBole's lower-level API (no ray) and restores NumPy's removed aliases in its own process;
its checkpoint is loaded here (torch >= 2.6's weights_only refuses it); pandas must be < 3 in the Python that runs it, e.g. a venv that sees this project's packages behind pandas 2.3.3:

    python -m venv rbenv && echo "$(python -c 'import site; print(site.getsitepackages()[0])')" > rbenv/lib/python3.11/site-packages/zz_main.pth
    rbenv/bin/pip install "pandas==2.3.3"      # then: python -m benchmarks.text_rich --recbole-python rbenv/bin/python
"""
import argparse, json, logging, os, sys, tempfile, time
from pathlib import Path

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', required=True, help='the folder of <name>.train.inter, .valid.inter, .test.inter')
    p.add_argument('--name', default='Scientific')
    p.add_argument('--epochs', type=int, default=60); p.add_argument('--stopping-step', type=int, default=10)
    p.add_argument('--seed', type=int, default=2020); p.add_argument('--threads', type=int, default=2)
    p.add_argument('--out', help='write the result here as JSON (else print it)')
    a = p.parse_args(argv)
    import numpy as np, torch
    torch.set_num_threads(a.threads)
    for old, new in (('float_', 'float64'), ('complex_', 'complex128'), ('unicode_', 'str_')):   # NumPy 2 removed them; RecBole's Config assigns them
        if not hasattr(np, old): setattr(np, old, getattr(np, new))
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed, init_logger, get_model, get_trainer
    with tempfile.TemporaryDirectory() as d:
        (Path(d)/a.name).mkdir()
        for s in ('train', 'valid', 'test'): os.symlink(Path(a.data).resolve()/f'{a.name}.{s}.inter', Path(d)/a.name/f'{a.name}.{s}.inter')
        cfg = dict(data_path=d, benchmark_filename=['train', 'valid', 'test'], alias_of_item_id=['item_id_list'],
                   load_col={'inter': ['user_id', 'item_id_list', 'item_id']}, train_neg_sample_args=None, MAX_ITEM_LIST_LENGTH=50,
                   loss_type='CE', hidden_size=64, inner_size=256, n_layers=2, n_heads=2, hidden_dropout_prob=0.5, attn_dropout_prob=0.5,
                   learning_rate=1e-3, train_batch_size=2048, eval_batch_size=2048, topk=[10, 50], metrics=['Recall', 'NDCG'],
                   valid_metric='NDCG@10', epochs=a.epochs, stopping_step=a.stopping_step,
                   eval_args={'mode': 'full', 'order': 'TO', 'split': None, 'group_by': 'user'}, device='cpu', use_gpu=False, seed=a.seed,
                   reproducibility=True, show_progress=False, worker=0, checkpoint_dir=str(Path(d)/'ckpt'), log_wandb=False,
                   save_dataset=False, save_dataloaders=False)
        config = Config(model='SASRec', dataset=a.name, config_dict=cfg)
        init_seed(config['seed'], config['reproducibility']); init_logger(config)
        logging.getLogger().setLevel(logging.WARNING)
        dataset = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, dataset)
        model = get_model(config['model'])(config, train_data._dataset).to(config['device'])
        trainer = get_trainer(config['MODEL_TYPE'], config['model'])(config, model)
        t0 = time.perf_counter()
        _, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
        fit_s = time.perf_counter() - t0
        # torch >= 2.6 loads with weights_only=True, which refuses RecBole's checkpoint (it pickles the Config): load it here
        ck = torch.load(trainer.saved_model_file, weights_only=False)
        model.load_state_dict(ck['state_dict']); model.load_other_parameter(ck.get('other_parameter'))
        test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    import recbole, pandas
    key = lambda k: k.replace('recall', 'R').replace('ndcg', 'N')
    res = dict(valid={key(k): float(v) for k, v in best_valid.items()}, test={key(k): float(v) for k, v in test.items()}, fit_seconds=fit_s,
               epochs_run=getattr(trainer, 'cur_epoch', None), n_items=int(dataset.item_num), seed=a.seed,
               versions=dict(recbole=recbole.__version__, pandas=pandas.__version__, torch=torch.__version__, python=sys.version.split()[0]))
    if a.out: Path(a.out).write_text(json.dumps(res, indent=1))
    else: print(json.dumps(res))

if __name__ == '__main__': main()
