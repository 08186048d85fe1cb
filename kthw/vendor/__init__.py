"""The vendor stage: the release files and images the inventory's nodes need, fetched into
``vendor/`` and verified against the pins; and pinning a new release."""
