"""Data preparation: raw public files -> a data set rearm reads, as a pipeline of small named
steps (parse -> deduplicate -> k-core -> map ids -> split -> encode -> write)."""

from rearm.data.prepare.amazon import prepare_amazon, read_id_mapping
from rearm.data.prepare.raw import read_meta, read_reviews
from rearm.data.prepare.steps import deduplicate, k_core, map_ids, split_counts, time_split
from rearm.data.prepare.text import TEMPLATE, item_sentence

__all__ = [
    "TEMPLATE",
    "deduplicate",
    "item_sentence",
    "k_core",
    "map_ids",
    "prepare_amazon",
    "read_id_mapping",
    "read_meta",
    "read_reviews",
    "split_counts",
    "time_split",
]
