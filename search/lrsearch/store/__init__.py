"""Every tie to the study database: URLs, opening, retries, batched writes."""
