"""Baselines, all with one interface: `fit(ds)` then `score(queries)` (a `training.evaluate.ScoreFn`)."""

from training.baselines.als import ALS
from training.baselines.ease import EASE
from training.baselines.itemknn import NEIGHBOUR_TABLES, ItemKNN, TableSpec, build_neighbours, build_transitions
from training.baselines.popularity import Popularity
from training.baselines.text_zeroshot import TextZeroShot

__all__ = ["ALS", "EASE", "ItemKNN", "Popularity", "TextZeroShot", "build_neighbours",
           "build_transitions", "NEIGHBOUR_TABLES", "TableSpec"]
