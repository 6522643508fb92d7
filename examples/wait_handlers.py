"""Handlers of examples/approval.yaml and examples/webhook.yaml (durable waits, docs/waits.md).

`drafts.write` stands in for an LLM: it builds the draft text from its inputs (no network) and
writes it to a file, a side effect a person can see; `drafts.discard` (the saga's compensation)
deletes that file again; `drafts.publish` moves an approved draft next to the published ones.
`orders.ship` records the payment a webhook signal carried and ships the order.

    steppe run examples/approval.yaml --import examples.wait_handlers
    steppe run examples/webhook.yaml --import examples.wait_handlers
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workers import NonRetryableStepError, StepContext, handler


@handler("drafts.write")
def write_draft(ctx: StepContext, topic: str, audience: str, drafts_dir: str) -> dict[str, Any]:
    """Draft a short announcement about `topic` for `audience` into `drafts_dir`/RUN.md."""
    title = f"{topic[:1].upper()}{topic[1:]}: what changes for {audience}"
    text = (
        f"# {title}\n\n"
        f"Starting today, {topic} is available to {audience}. Nothing changes in how you work:\n"
        f"open the dashboard and you will find {topic} where you expect it.\n"
    )
    path = Path(drafts_dir) / f"{ctx.run_id}.md"  # one name per run: a retry rewrites the same file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return {"draft": str(path), "title": title, "words": len(text.split())}


@handler("drafts.publish")
def publish_draft(ctx: StepContext, draft: str, published_dir: str, approved_by: str) -> dict[str, Any]:
    """Move the approved draft into `published_dir`, signed by whoever approved it."""
    source = Path(draft)
    target = Path(published_dir) / source.name
    if not source.exists():
        if target.exists():  # this attempt's predecessor already moved it
            return {"published": str(target), "approved_by": approved_by}
        raise NonRetryableStepError(f"the draft {source} is gone: run the workflow again to write a new one")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"{source.read_text()}\n_Approved by {approved_by}._\n")
    source.unlink()
    return {"published": str(target), "approved_by": approved_by}


@handler("drafts.discard")
def discard_draft(ctx: StepContext, draft: str) -> dict[str, Any]:
    """Compensation of `drafts.write`: delete the draft (idempotent: a missing file is already undone)."""
    path = Path(draft)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return {"deleted": str(path), "existed": existed}


@handler("orders.ship")
def ship(ctx: StepContext, order: str, amount_due: float, payment: dict[str, Any]) -> dict[str, Any]:
    """Record the payment from the webhook's payload and ship the order; an underpayment is refused."""
    try:
        paid = float(payment["amount"])
        reference = str(payment["reference"])
    except (KeyError, TypeError, ValueError):
        raise NonRetryableStepError(
            f"the payment signal must carry an amount and a reference, like "
            f'{{"amount": {amount_due}, "reference": "PSP-1"}}; it carried {payment!r}'
        ) from None
    if paid < float(amount_due):
        raise NonRetryableStepError(f"order {order} costs {amount_due} but {paid} was paid ({reference})")
    return {"order": order, "paid": paid, "reference": reference, "shipment": f"SHIP-{order}"}
