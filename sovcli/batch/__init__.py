"""`sovcli batch`: run a model over a folder of documents, resumably, one journal line each.

Modules, one job each:
- `extract`: plain text out of .txt/.md/.html/.pdf/.docx/.csv/.eml, or a per-document reason.
- `chunk`: token-sized chunks with overlap for documents longer than the context.
- `journal`: the JSONL results file (append + fsync per record, torn-line repair, resume index).
- `backends`: the local engine or OpenAI-compatible `--endpoint` servers (`remote`).
- `runner`: the job itself (plan, resume, map-reduce summaries, merged extractions, records).
- `sched` / `work`: which call runs next (smallest documents first, sequences shared fairly),
  and the state of one document in flight; `chunklog`: answers of long documents saved as
  they arrive, so an interrupted run resumes mid-document.
- `ray_backend` / `ray_worker`: `--ray`, one engine per node of a Ray cluster.
- `report`: CSV or Markdown tables from a results file.
"""
