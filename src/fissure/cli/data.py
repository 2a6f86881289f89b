"""``fissure data``: synthesize datasets, cut classification patches, prepare splits."""

from __future__ import annotations

import json
import time

import click


def _log(msg: str) -> None:
    click.echo(msg, err=True)


def _check_options(check) -> None:
    """Run ``check()``; an option value out of range is a usage error (exit code 2), as with
    ``prepare``, before any folder is read."""
    from fissure.errors import DataError, UsageError

    try:
        check()
    except DataError as exc:
        raise UsageError(str(exc)) from None


@click.group("data", context_settings={"help_option_names": ["-h", "--help"]})
def data():
    """Synthesize, ingest and prepare datasets."""


@data.command("synth")
@click.option("--task", type=click.Choice(["classify", "segment"]), required=True,
              help="segment: OUT/images/*.jpg + OUT/masks/*.png; classify: OUT/crack/, OUT/no_crack/ (balanced).")
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--count", type=int, default=100, show_default=True, help="Number of images.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Same seed: byte-identical files; image i does not depend on --count.")
@click.option("--size", type=int, default=256, show_default=True, help="Image side in pixels.")
@click.option("--preview", type=click.Path(dir_okay=False),
              help="Also write a contact sheet (PNG/JPEG) of the first 16 images, masks overlaid.")
def synth_cmd(task, out, count, seed, size, preview):
    """Generate synthetic concrete/asphalt images with cracks and hard negatives.

    Masks mark cracks only (never joints, paint, stains, shadows, scratches, leaves or tar).

    Example: fissure data synth --task segment --out data/synth --count 200 --seed 0
    """
    from fissure.data.synth import check_options, write_dataset

    _check_options(lambda: check_options(task, count, seed, size))
    t0 = time.perf_counter()
    counts = write_dataset(out, task, count, seed=seed, size=size, progress=True)
    dt = time.perf_counter() - t0
    _log(f"wrote {count} {task} images to {out} in {dt:.1f}s ({count / dt:.0f} img/s): "
         + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if preview:
        from fissure.data.sheet import classification_preview, segmentation_preview

        made = segmentation_preview(out, preview) if task == "segment" else classification_preview(out, preview)
        _log(f"preview: {made}")


@data.command("patches")
@click.option("--data", "data_dir", type=click.Path(), required=True,
              help="Segmentation set: DATA/images/<id>.* and DATA/masks/<id>.*.")
@click.option("--out", "out", type=click.Path(file_okay=False), required=True,
              help="Output: OUT/crack/*.jpg and OUT/no_crack/*.jpg.")
@click.option("--size", type=int, default=96, show_default=True, help="Tile side in pixels.")
@click.option("--stride", type=int, default=96, show_default=True, help="Step between tiles in pixels.")
@click.option("--threshold", type=float, default=0.01, show_default=True,
              help="Minimum crack-pixel fraction for a crack tile.")
@click.option("--min-length", type=int, default=None,
              help="Minimum extent in pixels of the largest crack piece in a crack tile [default: size/4].")
@click.option("--margin", type=int, default=8, show_default=True,
              help="A no_crack tile has no crack pixel within this many pixels around it.")
@click.option("--balance/--no-balance", default=True, show_default=True,
              help="Subsample the larger class (seeded) to the size of the smaller.")
@click.option("--max-per-class", type=int, default=None, help="Cap on patches per class.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for balancing.")
def patches_cmd(data_dir, out, size, stride, threshold, min_length, margin, balance, max_per_class, seed):
    """Cut crack / no_crack classification patches from a segmentation set.

    Tiles between the two rules (few crack pixels, or crack pixels only in the margin) are skipped.

    Example: fissure data patches --data ../shared/datasets/deepcrack/train --out data/patches
    """
    from fissure.data.patches import PatchSpec, extract_patches

    spec = PatchSpec(size=size, stride=stride, threshold=threshold, min_length=min_length, margin=margin,
                     balance=balance, seed=seed, max_per_class=max_per_class)
    _check_options(spec.check)
    counts = extract_patches(data_dir, out, spec, progress=True)
    _log(f"wrote {counts['crack']} crack and {counts['no_crack']} no_crack patches to {out}")


_PREPARE_HELP = """Build deterministic train/val/test splits for both models (the DVC prepare stage).

\b
Writes OUT/segment/{train,val,test}/{images,masks},
       OUT/classify/{train,val,test}/<class>/ (crack/no_crack patches cut per split, no
         leakage; or the classes of class-folder sources, e.g. blowhole ... free),
       OUT/manifest.json (counts, sources, classes, seed, params, content hash).

\b
Keys of the prepare: section of --params (options override them):
  source           sources, each a string or a mapping (see below);      [synth]
                   --source replaces the list
  count            synthetic images                                      [400]
  seed             seed for synthesis, splits and balancing              [0]
  size             synthetic image side in pixels                        [256]
  max_side         real images larger than this are downscaled           [512]
  val_fraction     fraction of a source for val (unless it sets its own) [0.15]
  test_fraction    fraction of a source for test (unless it sets its own)[0.15]
  feedback         folder of user corrections (segmentation or
                   classification layout), added to train; skipped
                   with a log line when absent; null disables            [data/feedback]
  patch_size       classification patch side in pixels                   [96]
  patch_stride     step between patches                                  [80]
  patch_threshold  minimum crack-pixel fraction of a crack patch         [0.01]
  patch_margin     no_crack patches have no crack this close             [8]
  patch_balance    balance crack/no_crack per split                      [true]
  patch_max_per_class  cap per class and split (null: none)              [null]

\b
Sources: 'synth' (synthetic images), a folder with images/ + masks/
(segmentation), or a folder of classes, <class>/ or images/<class>/
(classification; `fissure data import` makes these from public layouts).
A mapping sets a source's own split:
  source:
    - synth
    - path: data/my-survey                 # images/ + masks/
      val_fraction: 0.1
      test_fraction: 0.2
    - path: ../shared/datasets/magnetic-tile/train   # images/<class>/
    - {path: data/site-b, role: test}      # held back: all of it in test
  keys: path, layout (auto|segment|classes), role (split|train|val|test),
        val_fraction, test_fraction

Class folders other than crack/no_crack make classify/ an N-class set of
those classes (no patches are cut); folders named only by known negative
and positive names (Negative/Positive, free/crack, 0/1) are no_crack/crack.
A folder of splits (train/, test/) is not one source: list each split, the
held-back ones as {path: DIR/test, role: test}. Under dvc repro each folder
must also be a dep of the prepare stage in dvc.yaml (a warning says when it
is not).

Example: fissure data prepare --params params.yaml --out data/prepared
"""


@data.command("prepare", help=_PREPARE_HELP)
@click.option("--params", "params_file", type=click.Path(dir_okay=False),
              help="YAML file whose prepare: section holds the keys below.")
@click.option("--out", "out", type=click.Path(file_okay=False), default="data/prepared", show_default=True,
              help="Output folder (its segment/, classify/ and manifest.json are rewritten).")
@click.option("--source", multiple=True,
              help="'synth' or a folder (images/ + masks/, or class folders); repeat for several.")
@click.option("--count", type=int)
@click.option("--seed", type=int)
@click.option("--size", type=int)
@click.option("--max-side", type=int)
@click.option("--val-fraction", type=float)
@click.option("--test-fraction", type=float)
@click.option("--feedback", type=str, help="Feedback folder ('' disables).")
@click.option("--patch-size", type=int)
@click.option("--patch-stride", type=int)
@click.option("--patch-threshold", type=float)
@click.option("--patch-margin", type=int)
@click.option("--patch-balance/--no-patch-balance", default=None)
@click.option("--patch-max-per-class", type=int)
def prepare_cmd(params_file, out, source, **overrides):
    from fissure.data.prepare import dvc_dep_warnings, load_params, make_params, prepare

    section = load_params(params_file) if params_file else {}
    if source:
        overrides["source"] = list(source)
    if overrides.get("feedback") == "":
        section = {**section, "feedback": None}
        overrides["feedback"] = None
    params = make_params(section, **overrides)
    for line in dvc_dep_warnings(params):
        _log(line)
    t0 = time.perf_counter()
    manifest = prepare(params, out, progress=True, log=_log)
    _log(f"done in {time.perf_counter() - t0:.1f}s; counts: {json.dumps(manifest['counts'])}")


_IMPORT_HELP = """Convert a public dataset layout in SRC into fissure's layouts in DST.

\b
Formats:
  crackforest        image/*.jpg + groundTruth/*.mat (Segmentation 2 = crack), or masks
                     already converted to PNG (gt/, masks/)  -> DST/images, DST/masks
  deepcrack          train_img/ + train_lab/, test_img/ + test_lab/ (labels .png/.bmp,
                     0/255 or 0/1)                          -> DST/<split>/images, masks
  folder-of-classes  SRC/<class>/*, SRC/images/<class>/*, SRC/<split>/<class>/*, or the
                     magnetic-tile set's MT_<Class>/Imgs/   -> DST/<class>/
  images-masks       SRC/images + SRC/masks (or SRC/<split>/images + masks), paired by
                     path and stem                          -> DST/images, DST/masks

Images are checked and copied unchanged; masks become 0/255 PNGs. Re-running is idempotent
(unchanged files are not rewritten; other files in DST, dotfiles aside, are removed). DST must
be new, empty, or an earlier import (it holds import.json). The result is a
source for `fissure data prepare` (params.yaml prepare.source; a folder-of-classes
import makes an N-class classifier) or `fissure train --data`.

\b
Example: fissure data import --format deepcrack ~/Downloads/DeepCrack data/deepcrack
"""


@data.command("import", help=_IMPORT_HELP)
@click.option("--format", "fmt", type=click.Choice(["crackforest", "deepcrack", "folder-of-classes", "images-masks"]),
              required=True, help="Layout of SRC.")
@click.argument("src", type=click.Path(file_okay=True))
@click.argument("dst", type=click.Path(file_okay=True))
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show progress (plain lines in a log or a pipe for 50 images or more).")
def import_cmd(fmt, src, dst, progress):
    from fissure.data.importers import import_dataset

    t0 = time.perf_counter()
    result = import_dataset(fmt, src, dst, progress=progress)
    lines = result.summary()
    lines[0] += f" in {time.perf_counter() - t0:.1f}s"
    for line in lines:
        _log(line)
