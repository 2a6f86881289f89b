"""``fissure model-card``: the Markdown model card of a model version."""

from __future__ import annotations

import click


@click.command("model-card", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model", required=True,
              help="models:/crack-segmenter@champion, models:/NAME/3, runs:/ID/model, or a local model dir "
                   "(its run must be in the tracking store: the card is written from it).")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Markdown file to write [default: print to stdout].")
@click.option("--report", "reports", type=click.Path(dir_okay=False), multiple=True,
              help="A `fissure evaluate` JSON of this model to add as a further evaluation (repeatable), "
                   "e.g. the scores on real images never trained on.")
@click.option("--attach", is_flag=True,
              help="Also log this card to the version's run (model_card.md), tag the version with it "
                   "and update its description (registered versions get this when registered).")
def model_card(model, out, reports, attach):
    """Write the model card of a model version: data, params, metrics by dataset and slice,
    known failure cases, intended use and limits.

    \b
    Everything comes from MLflow (the version, its run's params, metrics and test-split
    quality report) and the prepared data's manifest when it is still on disk.

    \b
    Example:
      fissure model-card --model models:/crack-segmenter@champion --out card.md
      fissure model-card --model models:/crack-segmenter/3 --report reports/deepcrack.json
    """
    from fissure.errors import UsageError
    from fissure.training import modelcard

    needs_version = "--attach needs a registered version: --model models:/NAME/VERSION or models:/NAME@ALIAS"
    if attach and not model.startswith("models:/"):
        raise UsageError(needs_version)
    facts, text = modelcard.make_card(model, reports)  # one card: to --out (or stdout) and, with --attach, the run
    if attach and not facts.version:
        raise UsageError(needs_version)
    if out is not None:
        modelcard.save(text, out)
    if attach:
        uri = modelcard.attach(facts.name, facts.version, facts.run_id, facts=facts, text=text)
        click.echo(f"attached to {facts.name} v{facts.version}: {uri}", err=True)
    if out is None:
        click.echo(text, nl=False)
    else:
        click.echo(f"model card -> {out}", err=True)
