"""Governance for regulated sites: one package, used by sources, engine, server, batch and CLI.

- `signing`: OpenSSF Model Signing (OMS) signatures beside each model, made and checked with
  the `model-signing` library (own key pair, own PKI, PKCS#11).
- `policy`: the site policy (`$SOVCLI_POLICY`, else /etc/sovcli/policy.toml) that every command
  enforces before it touches a model; a malformed policy stops everything (fail closed).
- `audit`: the tamper-evident audit trail (hash-chained JSONL, rotation, retention anchors,
  verification, seals).
- `sbom`: the CycloneDX 1.6 ML-BOM of a model; `attest`: the evidence pack for an auditor.

Rank 5 (tests/test_layers.py): it may use the store and everything below, never sources,
engine, server, batch or the CLI.
"""
