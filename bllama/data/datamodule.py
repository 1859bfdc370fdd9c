"""Feeding the trainer: the resumable endless sample stream (StreamDataset, StreamSampler) and the
LightningDataModule (train/validation split, loaders)."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

try:
    import pytorch_lightning as pl
except ImportError:  # pragma: no cover
    import lightning.pytorch as pl  # type: ignore

from .token_files import TokenDataset


class StreamDataset(Dataset):
    """Sample number ``g = 0, 1, 2, ...`` of an endless stream over ``base``: pass ``e = g // len(base)`` is a fresh
    seeded permutation of the blocks (``shuffle``), so every block is seen once per pass. What sample ``g`` is
    depends on ``(seed, g)`` only: not on the batch size, the number of processes, workers or restarts. A base with
    ``set_epoch`` (a randomly sampled :class:`TokenDataset`) is told the pass, so its random offsets change too."""

    def __init__(self, base: Dataset, seed: int = 0, shuffle: bool = True):
        if len(base) < 1:
            raise ValueError("the training set is empty")
        self.base, self.seed, self.shuffle = base, int(seed), shuffle
        self._pass, self._perm = -1, None

    def __len__(self) -> int:  # one pass; the sampler decides how far the stream goes
        return len(self.base)

    def index(self, g: int) -> tuple[int, int]:
        """(pass, block index in base) of sample g."""
        e, i = divmod(int(g), len(self.base))
        if self.shuffle:
            if e != self._pass:
                self._perm = np.random.default_rng([self.seed, e]).permutation(len(self.base))
                self._pass = e
            i = int(self._perm[i])
        return e, i

    def __getitem__(self, g: int):
        e, i = self.index(g)
        _set_epoch(self.base, e)
        return self.base[i]


def _epoch_datasets(ds: Dataset) -> list:
    """The datasets with ``set_epoch`` in ds, through Subset and ConcatDataset: a random .bin given with a text file
    (`bllama train a.txt b.bin --sampling random`) sits in a split of their concatenation, and was never told the
    pass, so every pass drew the same offsets."""
    if hasattr(ds, "set_epoch"):
        return [ds]
    inner = [ds.dataset] if isinstance(ds, Subset) else getattr(ds, "datasets", [])
    return [d for part in inner for d in _epoch_datasets(part)]


def _set_epoch(ds: Dataset, epoch: int) -> None:
    for d in _epoch_datasets(ds):
        d.set_epoch(epoch)


class StreamSampler(torch.utils.data.distributed.DistributedSampler):
    """This rank's share ``start + rank, start + rank + world, ...`` of the global sample numbers
    ``[0, world * length)``, beginning at global sample ``start`` (the samples a resumed run has already trained on).

    ``len()`` is the whole run's share (``length``) even when resuming, because that is how Lightning counts a
    resumed epoch: the batches it restored as done plus the ones this sampler still yields. A DistributedSampler
    subclass so that Lightning does not wrap it in one of its own."""

    def __init__(self, length: int, rank: int = 0, world: int = 1, start: int = 0):
        # no super().__init__: it wants a dataset and a process group; only the attributes are shared
        if start % world:
            raise ValueError(f"start {start} is not a multiple of the world size {world}")
        self.length, self.rank, self.num_replicas, self.start = int(length), int(rank), int(world), int(start)
        self.epoch, self.shuffle, self.seed, self.drop_last = 0, False, 0, True

    def __iter__(self):
        end = self.length * self.num_replicas
        return iter(range(self.start + self.rank, end, self.num_replicas))

    def __len__(self) -> int:
        return self.length


class _PassSampler(torch.utils.data.Sampler):
    """Pass ``epoch`` of a :class:`StreamDataset` (sample numbers ``epoch * n ...``), for an epoch-based run: the
    pass number travels in the index, so a randomly sampled :class:`TokenDataset` draws new offsets each epoch, in
    worker processes too (Lightning calls ``set_epoch`` here, in the main process)."""

    def __init__(self, n: int):
        self.n, self.epoch = int(n), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        return iter(range(self.epoch * self.n, (self.epoch + 1) * self.n))

    def __len__(self) -> int:
        return self.n


class _StreamLoader(DataLoader):
    """The loader of a :class:`StreamSampler`. Its position is the trainer's global step, which Lightning restores
    before it builds the loader, so there is nothing of its own to save; having ``state_dict``/``load_state_dict``
    tells Lightning that it resumes mid-epoch (no "dataloader is not resumable" warning)."""

    def state_dict(self) -> dict:
        return {"start": self.sampler.start}

    def load_state_dict(self, state: dict) -> None:
        pass


# --------------------------------------------------------------------------
# Lightning data module
# --------------------------------------------------------------------------
class TextDataModule(pl.LightningDataModule):
    """Train/validation split and loaders around one of the datasets above.

    ``split="contiguous"`` (default): the first ``train_test_split`` fraction of
    the blocks (by position in the corpus) is training data and the rest is
    validation, so validation text is held out rather than interleaved; for a
    :class:`TokenDataset` the token range is split.  ``split="random"``:
    a seeded random partition of the blocks.  Pass ``val_dataset`` to use a
    separate validation set and no split.
    """

    def __init__(self, dataset: Dataset, batch_size: int = 8, train_test_split: float = 0.9, seed: int = 42,
                 num_workers: int = 0, *, split: str = "contiguous", val_dataset: Dataset | None = None,
                 pin_memory: bool = False, drop_last: bool = False, resumable: bool = False):
        super().__init__()
        self.resumable = resumable
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if split not in ("contiguous", "random"):
            raise ValueError(f"split must be 'contiguous' or 'random', got {split!r}")
        if not 0.0 < train_test_split <= 1.0:
            raise ValueError(f"train_test_split must be in (0, 1], got {train_test_split}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.train_test_split = float(train_test_split)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.split = split
        self.pin_memory = pin_memory
        self.drop_last = drop_last
        self._generator = torch.Generator().manual_seed(self.seed)

        if val_dataset is not None:
            self.train_dataset, self.val_dataset = dataset, val_dataset
        elif self.train_test_split >= 1.0:
            self.train_dataset, self.val_dataset = dataset, Subset(dataset, [])
        elif split == "contiguous" and isinstance(dataset, TokenDataset):
            self.train_dataset, self.val_dataset = dataset.split(self.train_test_split)
        else:
            n = len(dataset)
            if n < 2:
                raise ValueError(f"dataset has {n} block(s); need at least 2 to split into train and validation")
            n_train = min(max(int(round(n * self.train_test_split)), 1), n - 1)
            if split == "contiguous":
                train_idx = list(range(n_train))
                val_idx = list(range(n_train, n))
            else:
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
                train_idx, val_idx = perm[:n_train], perm[n_train:]
            self.train_dataset = Subset(dataset, train_idx)
            self.val_dataset = Subset(dataset, val_idx)

    def setup(self, stage: str | None = None) -> None:  # split is done eagerly in __init__
        pass

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        if shuffle and _epoch_datasets(ds):
            # nothing told the dataset the epoch: a randomly sampled TokenDataset served the same offsets every epoch
            return DataLoader(StreamDataset(ds, seed=self.seed), batch_size=self.batch_size,
                              sampler=_PassSampler(len(ds)), num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                              pin_memory=self.pin_memory, drop_last=self.drop_last)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=self._generator if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            drop_last=self.drop_last and shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer if self.resumable else None
        if trainer is None or trainer.max_steps is None or trainer.max_steps < 1:
            return self._loader(self.train_dataset, shuffle=True)
        return self._stream_loader(trainer)

    def _stream_loader(self, trainer) -> DataLoader:
        """``resumable=True`` under a Trainer with max_steps: the whole run is one Lightning epoch over a
        :class:`StreamDataset` (reshuffled passes over the training blocks), and a run resumed from a checkpoint
        starts at the first sample that the checkpointed steps did not train on, in any process count.

        Lightning restores the trainer's global step before it asks for this loader; a plain shuffled loader
        would restart the epoch from its first batch (training on those batches twice and never on the last ones).
        """
        per_step = self.batch_size * trainer.accumulate_grad_batches  # samples per rank per optimizer step
        world, rank = trainer.world_size, trainer.global_rank
        sampler = StreamSampler(trainer.max_steps * per_step, rank=rank, world=world,
                                start=trainer.global_step * per_step * world)
        return _StreamLoader(StreamDataset(self.train_dataset, seed=self.seed), batch_size=self.batch_size,
                          sampler=sampler, num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=self.pin_memory, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)
