"""Everything a run keeps on disk: atomic files and JSONL (``files``), the checkpoint format and safe loading
(``checkpoint``), provenance, resume safety (``resume``) and the one-writer lock (``lock``)."""
