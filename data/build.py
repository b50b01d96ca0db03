"""From the shared ``--data/--val-data/--val-fraction/--crop/--val-crop/--cache`` flags to datasets."""
from .dataset import PairedDataset
from .pixel_cache import PixelCache, default_pixel_cache_dir
from .pairs import check_pairs, resolve_datasets_pairs


def pixel_cache_from_args(args):
    """The `PixelCache` that ``--cache`` / ``--cache-dir`` ask for, or None without ``--cache``."""
    if not args.cache:
        return None
    return PixelCache(getattr(args, "cache_dir", None) or default_pixel_cache_dir())


def build_datasets(args, target_aliases=None, aligned=None):
    """Discover, check and wrap the pairs named by the shared flags; returns (train_set, val_set).

    ``aligned(pairs, split) -> {key: [path per pair]}`` (split 'train' or 'val') adds images aligned
    with each split's pairs (a frozen backbone's outputs, see :class:`data.dataset.PairedDataset`).

    Every pair's headers are checked before training starts, so a broken file is reported now
    rather than hours into a run.
    """
    train_pairs, val_pairs = resolve_datasets_pairs(args.data, val_data=args.val_data,
                                                    val_fraction=args.val_fraction, seed=args.seed,
                                                    target_aliases=target_aliases)
    check_pairs(train_pairs + val_pairs)
    print(f"data: {len(train_pairs)} training pairs, {len(val_pairs)} validation pairs from {args.data}")
    cache = pixel_cache_from_args(args)
    train_set = PairedDataset(train_pairs, crop=args.crop, augment=True, cache=cache,
                              aligned=aligned(train_pairs, "train") if aligned else None)
    val_set = PairedDataset(val_pairs, center_crop=args.val_crop or None, cache=cache,
                            aligned=aligned(val_pairs, "val") if aligned else None)
    return train_set, val_set
