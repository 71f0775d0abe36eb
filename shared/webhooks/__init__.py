"""Webhooks: which targets may be called (`targets`), fanning events out into deliveries and sending
them signed, with retries (`delivery`)."""
