"""Distributed training and evaluation: sharding, the gloo BatchNorm, torchrun jobs on 2 CPU ranks."""

from __future__ import annotations

import shutil
import signal
import socket
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from robeval.checkpoints import load_checkpoint, read_jsonl
from robeval.cli import main
from robeval.data.batches import TensorSource, shard_slice
from robeval.distributed import (
    SINGLE,
    GlobalBatchNorm2d,
    World,
    describe_failure,
    launch,
    on_main,
    strip_option,
    sync_batchnorm,
)
from robeval.errors import RobevalError
from robeval.results import ResultsStore

# --------------------------------------------------------------------------- in one process


@pytest.mark.parametrize("size,ranks", [(64, 2), (10, 3), (7, 4), (1, 2)])
def test_shard_slices_partition_a_batch(size, ranks):
    covered = [i for rank in range(ranks) for i in range(size)[shard_slice(size, (rank, ranks))]]
    assert covered == list(range(size))


def test_shards_of_an_augmented_batch_are_the_parts_of_the_global_batch():
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(40)
    source = TensorSource(images, labels, augment=True, padding=2)
    whole = list(source.batches(16, seed=3, shuffle=True, drop_last=True))
    parts = [list(source.batches(16, seed=3, shuffle=True, drop_last=True, shard=(rank, 2)))
             for rank in range(2)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 2
    for index, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][index][0], parts[1][index][0]]), x)
        assert torch.equal(torch.cat([parts[0][index][1], parts[1][index][1]]), y)


def test_strip_option_removes_both_spellings_and_nothing_else():
    args = ["train", "--nproc", "2", "--epochs", "3", "--nproc=4", "--nprocs-like", "x"]
    assert strip_option(args, "--nproc") == ["train", "--epochs", "3", "--nprocs-like", "x"]


def test_on_main_in_a_single_process_runs_the_work_and_raises_its_error():
    assert on_main(lambda: 41 + 1, SINGLE) == 42

    def fails():
        raise RobevalError("bad input")

    with pytest.raises(RobevalError, match="bad input"):
        on_main(fails, SINGLE)


class _Failure:
    def __init__(self, exitcode):
        self.exitcode = exitcode

    def signal_name(self):
        return signal.Signals(-self.exitcode).name


class _ChildFailed:
    def __init__(self, rank, exitcode):
        self.rank, self.failure = rank, _Failure(exitcode)

    def get_first_failure(self):
        return self.rank, self.failure


def test_failures_are_described_by_rank_and_signal_or_status():
    assert describe_failure(_ChildFailed(1, -9)) == "rank 1 was killed by SIGKILL"
    assert describe_failure(_ChildFailed(0, 2)) == "rank 0 exited with status 2"


def test_world_roles():
    assert SINGLE.is_main and not SINGLE.distributed
    assert not World(rank=1, size=2).is_main and World(rank=0, size=2).distributed


def test_sync_batchnorm_swaps_every_cpu_batchnorm_and_keeps_its_state():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    net[1].running_mean.fill_(0.5)
    synced = sync_batchnorm(net, torch.device("cpu"))
    assert isinstance(synced[1], GlobalBatchNorm2d) and isinstance(synced[2][0], GlobalBatchNorm2d)
    assert torch.equal(synced[1].running_mean, torch.full((4,), 0.5))
    assert list(synced.state_dict()) == list(net.state_dict())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _batchnorm_rank(rank: int, port: int, x: torch.Tensor, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    torch.manual_seed(0)
    layer = GlobalBatchNorm2d(3)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
    part = x[shard_slice(len(x), (rank, 2))].clone().requires_grad_(True)
    y = layer(part)
    # the same loss as one process on the whole batch: the mean over all images, split in two
    ((y * torch.arange(1.0, 4.0)[None, :, None, None]).pow(2).sum() / len(x)).backward()
    out[rank] = {"y": y.detach(), "x_grad": part.grad, "w_grad": layer.weight.grad,
                 "running_var": layer.running_var.clone()}
    dist.destroy_process_group()


@pytest.mark.slow
def test_global_batchnorm_on_two_gloo_ranks_equals_batchnorm_on_the_whole_batch():
    x = torch.randn(10, 3, 4, 4) * 2 + 1
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_batchnorm_rank, args=(_free_port(), x, out), nprocs=2)
        ranks = dict(out)
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(3)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-0.5, 0.5)
    whole = x.clone().requires_grad_(True)
    y = reference(whole)
    ((y * torch.arange(1.0, 4.0)[None, :, None, None]).pow(2).sum() / len(x)).backward()
    torch.testing.assert_close(torch.cat([ranks[0]["y"], ranks[1]["y"]]), y.detach())
    torch.testing.assert_close(torch.cat([ranks[0]["x_grad"], ranks[1]["x_grad"]]), whole.grad)
    # the ranks' shares of the weight gradient add up to the whole-batch one (DDP sums them)
    torch.testing.assert_close(ranks[0]["w_grad"] + ranks[1]["w_grad"], reference.weight.grad)
    for rank in (0, 1):
        torch.testing.assert_close(ranks[rank]["running_var"], reference.running_var)


# --------------------------------------------------------------------------- torchrun, 2 ranks

TRAIN_ARGS = ["--model", "cnn-small", "--method", "pgd", "--norm", "l2", "--eps", "0.5",
              "--train-subset", "384", "--val-size", "64", "--batch-size", "64", "--lr", "0.01",
              "--val-pgd-steps", "2", "--diagnostics-batch", "0", "--sync-bn", "--quiet"]


@pytest.fixture
def one_thread_per_process(monkeypatch):
    """Every rank and this process compute with one thread, whatever the machine or its load.

    A two-rank run and a one-process run differ only by how the batch's gradient is summed
    (two halves all-reduced, or all at once); with a free thread count, the intra-op split of
    each convolution's reductions adds an order that depends on the cores, so the same
    comparison could pass on one machine and fail on another.
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # `launch` hands it to every rank
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cifar(data_dir: Path) -> list[str]:
    return ["--dataset", "cifar10", "--data-dir", str(data_dir)]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "last.pt")["model"]


def _assert_same_weights(a: dict, b: dict) -> None:
    # L2 steps keep training continuous in the weights, so reduction-order noise stays small
    # (a sign step, as in L∞ PGD, can flip on a float difference and amplify it). BatchNorm's
    # running statistics are means of activations of the last layers, where that noise has
    # passed through the whole network: one thread per process on two ranks against one
    # process measured 2.9e-4 (2.7e-3 relative) on a running mean after one epoch.
    for name in a:
        statistics = name.endswith(("running_mean", "running_var"))
        rtol, atol = (1e-2, 1e-3) if statistics else (1e-3, 1e-4)
        torch.testing.assert_close(a[name].float(), b[name].float(), rtol=rtol, atol=atol,
                                   msg=lambda m, name=name: f"{name}: {m}")


def _script(path: Path, body: str) -> list[str]:
    path.write_text(textwrap.dedent(body))
    return [str(path)]


@pytest.mark.slow
def test_ddp_training_on_two_ranks_equals_one_process_on_the_same_global_batch(
        cifar10_mini_dir, tmp_path, one_thread_per_process):
    args = ["train", *TRAIN_ARGS, *_cifar(cifar10_mini_dir), "--epochs", "1"]
    launch(2, [*args, "--out", str(tmp_path / "ddp")])
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    _assert_same_weights(_weights(tmp_path / "ddp"), _weights(tmp_path / "single"))
    history = read_jsonl(tmp_path / "ddp" / "history.jsonl")
    assert history[0]["ranks"] == 2


@pytest.mark.slow
def test_killed_rank_stops_training_clearly_and_the_rerun_resumes(cifar10_mini_dir, tmp_path,
                                                                  one_thread_per_process):
    dying = _script(tmp_path / "dying_train.py", """
        import os, signal, sys
        import robeval.train.loop as loop
        original = loop.train_one_epoch
        def train_one_epoch(*args, **kwargs):
            if os.environ.get("RANK") == "1" and args[4] == 1:   # rank 1, second epoch
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        loop.train_one_epoch = train_one_epoch
        from robeval.cli import main
        sys.exit(main())
        """)
    args = ["train", *TRAIN_ARGS, *_cifar(cifar10_mini_dir), "--epochs", "2",
            "--out", str(tmp_path / "ddp")]
    with pytest.raises(RobevalError, match="rank 1 was killed by SIGKILL"):
        launch(2, args, program=dying, hint="rerun with --resume")
    assert load_checkpoint(tmp_path / "ddp" / "last.pt")["epoch"] == 1
    assert len(read_jsonl(tmp_path / "ddp" / "history.jsonl")) == 1
    shutil.copytree(tmp_path / "ddp", tmp_path / "on-one-rank")
    launch(2, [*args, "--resume"])
    assert [row["epoch"] for row in read_jsonl(tmp_path / "ddp" / "history.jsonl")] == [1, 2]
    launch(2, [*args[:-1], str(tmp_path / "whole")])     # the same job, never interrupted
    resumed, whole = _weights(tmp_path / "ddp"), _weights(tmp_path / "whole")
    assert all(torch.equal(resumed[name], whole[name]) for name in whole)
    # the same state also resumes in a single process (rank counts may differ across resumes)
    assert main([*args[:-1], str(tmp_path / "on-one-rank"), "--resume"]) == 0
    _assert_same_weights(_weights(tmp_path / "on-one-rank"), whole)


def _attack_args(run: Path, data_dir: Path, db: Path) -> list[str]:
    return ["attack", str(run), "--suite", "fgsm,pgd10,apgd-ce", "--n", "88", "--batch-size", "8",
            "--data-dir", str(data_dir), "--db", str(db), "--no-checks", "--quiet"]


def _outcomes(db: Path) -> pd.DataFrame:
    store = ResultsStore(db)
    (run_id,) = store.runs()["id"].tolist()
    return store.per_sample(run_id)


@pytest.mark.slow
def test_sharded_evaluation_gives_exactly_the_single_process_outcomes(
        trained_cifar_run, cifar10_mini_dir, tmp_path):
    assert main([*_attack_args(trained_cifar_run, cifar10_mini_dir, tmp_path / "two.sqlite"),
                 "--nproc", "2"]) == 0
    assert main(_attack_args(trained_cifar_run, cifar10_mini_dir, tmp_path / "one.sqlite")) == 0
    two, one = _outcomes(tmp_path / "two.sqlite"), _outcomes(tmp_path / "one.sqlite")
    assert len(one) == 88
    pd.testing.assert_frame_equal(two, one)


@pytest.mark.slow
def test_killed_rank_leaves_a_consistent_store_and_a_rerun_on_one_rank_finishes_it(
        trained_cifar_run, cifar10_mini_dir, tmp_path):
    dying = _script(tmp_path / "dying_attack.py", """
        import os, signal, sys
        import robeval.evaluate as evaluate
        original = evaluate.evaluate_batch
        def evaluate_batch(*args, **kwargs):
            if os.environ.get("RANK") == "1" and args[5] >= 5:   # rank 1, batch 5
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        evaluate.evaluate_batch = evaluate_batch
        from robeval.cli import main
        sys.exit(main())
        """)
    db = tmp_path / "killed.sqlite"
    args = _attack_args(trained_cifar_run, cifar10_mini_dir, db)
    with pytest.raises(RobevalError, match="rank 1 was killed by SIGKILL"):
        launch(2, args, program=dying)
    store = ResultsStore(db)
    (run_id,) = store.runs()["id"].tolist()
    done = store.done_batches(run_id)
    assert 0 < len(done) < 11 and 5 not in done
    partial = store.per_sample(run_id)  # every committed batch is whole: 8 samples, 3 attacks
    assert sorted(partial["index"] // 8) == sorted(b for b in done for _ in range(8))
    assert partial.filter(like="outcome_").notna().all().all()
    assert main(args) == 0                             # resumes with a different number of ranks
    assert main(_attack_args(trained_cifar_run, cifar10_mini_dir, tmp_path / "one.sqlite")) == 0
    pd.testing.assert_frame_equal(_outcomes(db), _outcomes(tmp_path / "one.sqlite"))


@pytest.mark.slow
def test_nproc_one_runs_in_this_process(trained_cifar_run, cifar10_mini_dir, tmp_path):
    db = tmp_path / "one.sqlite"
    args = _attack_args(trained_cifar_run, cifar10_mini_dir, db)
    args[args.index("--n") + 1] = "16"
    assert main([*args, "--nproc", "1"]) == 0
    assert len(_outcomes(db)) == 16


def test_batch_size_that_does_not_split_over_the_ranks_is_a_clear_error(tmp_path):
    from robeval.train.config import config_from_dict
    from robeval.train.loop import _open_run

    config = config_from_dict({"optim": {"batch_size": 64}})
    with pytest.raises(RobevalError, match="does not split evenly over 3 ranks"):
        _open_run(tmp_path / "run", config, False, False, World(rank=0, size=3), print)
    assert not (tmp_path / "run").exists()
