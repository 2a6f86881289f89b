"""``fissure model-card``: the Markdown model card of a model version."""

from __future__ import annotations

import click


@click.command("model-card", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model", required=True,
              help="models:/crack-segmenter@champion, models:/NAME/3, runs:/ID/model, or a local model dir.")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Markdown file to write [default: print to stdout].")
@click.option("--report", "reports", type=click.Path(dir_okay=False), multiple=True,
              help="A `fissure evaluate` JSON to add as a further evaluation (repeatable), e.g. the "
                   "scores on real images never trained on.")
@click.option("--attach", is_flag=True,
              help="Also log the card to the version's run (model_card.md), tag the version with it "
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

    if attach and not model.startswith("models:/"):
        raise UsageError("--attach needs a registered version: --model models:/NAME/VERSION or models:/NAME@ALIAS")
    text = modelcard.write_card(model, out, reports)
    if attach:
        facts = modelcard.gather(model)
        uri = modelcard.attach(facts.name, facts.version, facts.run_id)
        click.echo(f"attached to {facts.name} v{facts.version}: {uri}", err=True)
    if out is None:
        click.echo(text, nl=False)
    else:
        click.echo(f"model card -> {out}", err=True)
