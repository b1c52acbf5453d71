"""The demo's classification task: data, initial MLP weights and batch order.

Everything random is drawn here, once, from one seed, so every optimizer in
every framework starts from the same weights and sees the same batches: the
curves differ only by the optimizer (and, across frameworks, by float
rounding).
"""

from __future__ import annotations

import dataclasses

import numpy as np

DATASETS = ('digits', 'mnist1d')
HIDDEN_UNITS = 64
NUM_CLASSES = 10
BATCH_SIZE = 64
# Points on each curve (the train loss over the whole training set and the
# test accuracy); more would make evaluation cost a visible part of wall time.
NUM_EVALUATIONS = 50


@dataclasses.dataclass(frozen=True)
class Task:
  """One run's inputs, shared by all optimizers and frameworks.

  Attributes:
    dataset: 'digits' or 'mnist1d'.
    x_train, y_train, x_test, y_test: float32 features (standardised with the
      training statistics) and int32 labels.
    init_params: the MLP's initial ``(w1, b1, w2, b2)``, float32, with
      ``logits = relu(x @ w1 + b1) @ w2 + b2``.
    batches: ``(steps, BATCH_SIZE)`` indices into the training set.
    eval_steps: the step counts after which to evaluate, from 0 to ``steps``.
  """

  dataset: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  init_params: tuple[np.ndarray, ...]
  batches: np.ndarray
  eval_steps: tuple[int, ...]

  @property
  def steps(self) -> int:
    return len(self.batches)


def _load_raw(dataset: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Train and test features and labels, generated or loaded offline."""
  if dataset == 'digits':
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
    features, labels = load_digits(return_X_y=True)   # bundled with scikit-learn
    order = np.random.default_rng(seed).permutation(len(labels))
    test = order[:len(order) // 4]
    train = order[len(order) // 4:]
    return features[train], labels[train], features[test], labels[test]
  if dataset == 'mnist1d':
    # make_dataset generates the data from templates; get_dataset would download it.
    from mnist1d.data import get_dataset_args, make_dataset  # pylint: disable=import-outside-toplevel
    data = make_dataset(get_dataset_args())
    return data['x'], data['y'], data['x_test'], data['y_test']
  raise ValueError(f'dataset must be one of {DATASETS}, got {dataset!r}.')


def _glorot_uniform(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
  limit = np.sqrt(6.0 / (fan_in + fan_out))
  return rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)


def _batch_order(rng: np.random.Generator, num_train: int, steps: int) -> np.ndarray:
  """Shuffled epochs cut into full batches, as many as ``steps`` needs."""
  per_epoch = num_train // BATCH_SIZE
  epochs = -(-steps // per_epoch)
  batches = [rng.permutation(num_train)[:per_epoch * BATCH_SIZE].reshape(per_epoch, BATCH_SIZE)
             for _ in range(epochs)]
  return np.concatenate(batches)[:steps]


def make_task(dataset: str, steps: int, seed: int = 0) -> Task:
  """Loads ``dataset`` and draws the initial weights and ``steps`` batches.

  Args:
    dataset: one of :data:`DATASETS`.
    steps: number of training steps, >= 1.
    seed: seeds the train/test split (digits), the weights and the batches.

  Returns:
    The :class:`Task`.

  Raises:
    ValueError: for an unknown dataset or ``steps < 1``.
  """
  if steps < 1:
    raise ValueError(f'steps must be an integer >= 1, got {steps!r}.')
  x_train, y_train, x_test, y_test = _load_raw(dataset, seed)
  mean = x_train.mean(axis=0)
  std = x_train.std(axis=0)
  std[std == 0] = 1.0   # digits has pixels that are always blank
  rng = np.random.default_rng(seed)
  num_features = x_train.shape[1]
  init_params = (
      _glorot_uniform(rng, num_features, HIDDEN_UNITS), np.zeros(HIDDEN_UNITS, np.float32),
      _glorot_uniform(rng, HIDDEN_UNITS, NUM_CLASSES), np.zeros(NUM_CLASSES, np.float32),
  )
  eval_steps = tuple(sorted(set(np.linspace(0, steps, NUM_EVALUATIONS + 1).round().astype(int).tolist())))
  return Task(
      dataset=dataset,
      x_train=((x_train - mean) / std).astype(np.float32),
      y_train=y_train.astype(np.int32),
      x_test=((x_test - mean) / std).astype(np.float32),
      y_test=y_test.astype(np.int32),
      init_params=init_params,
      batches=_batch_order(rng, len(y_train), steps),
      eval_steps=eval_steps,
  )
