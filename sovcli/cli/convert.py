"""CLI: `sovcli convert` (HF safetensors -> GGUF) and `sovcli quantize` (llama.cpp quantizer).

Heavy imports (numpy, gguf, llama_cpp) happen inside the commands so `sovcli --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

CONVERT_HELP = """Convert a Hugging Face safetensors checkpoint folder to a GGUF file.

Reads config.json, *.safetensors (single or sharded), the tokenizer (tokenizer.json,
tokenizer.model or tekken.json), tokenizer_config.json and generation_config.json. Streams
one tensor at a time (memory stays near the largest tensor) and writes the file atomically.

Supported: Llama 2/3.x, Mistral/Ministral, Mixtral, Qwen2/2.5, Qwen3, Gemma 2/3 (text), Phi-3.

\b
Examples:
  sovcli convert ./SmolLM2-135M-Instruct -o smollm2-f16.gguf
  sovcli convert ./Qwen2.5-0.5B-Instruct --outtype bf16 --json
  sovcli quantize smollm2-f16.gguf --type Q4_K_M
"""

QUANTIZE_HELP = """Quantize a GGUF with llama.cpp's own quantizer.

Types: Q4_K_M (good default), Q5_K_M, Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S/M/L,
Q4_K_S, Q5_K_S, F16, BF16, F32, and the IQ types (IQ1_S ... IQ4_XS, with --imatrix only).

\b
Examples:
  sovcli quantize smollm2-f16.gguf --type Q4_K_M
  sovcli quantize smollm2-f16.gguf --type Q8_0 -o smollm2-q8.gguf --threads 4
  sovcli quantize model-f16.gguf --type IQ4_XS --imatrix model.imatrix.gguf
"""


def _default_convert_output(folder: Path, outtype: str) -> Path:
    return Path.cwd() / f"{folder.resolve().name}-{outtype}.gguf"


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""

    @app.command("convert", help=CONVERT_HELP)
    def convert_cmd(
        hf_dir: Path = typer.Argument(..., help="Hugging Face checkpoint folder."),
        outtype: str = typer.Option(
            "f16", "--outtype", "-t", help="f16, bf16, f32 or q8_0.", case_sensitive=False
        ),
        output: Path | None = typer.Option(
            None, "--output", "-o", help="GGUF to write (default: ./<folder>-<outtype>.gguf)."
        ),
        pre_tokenizer: str | None = typer.Option(
            None,
            "--pre-tokenizer",
            help="Force llama.cpp's BPE pre-tokenizer type (e.g. llama-bpe, qwen2) when it "
            "cannot be identified.",
        ),
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        from sovcli.console import log, print_json
        from sovcli.convert.converter import convert_checkpoint
        from sovcli.convert.progress import tensor_progress

        outtype = outtype.lower()
        target = output or _default_convert_output(hf_dir, outtype)
        with tensor_progress(f"convert {outtype}", enabled=not quiet and not json_out) as update:
            result = convert_checkpoint(
                hf_dir, target, outtype=outtype, pre_tokenizer=pre_tokenizer, on_progress=update
            )
        if json_out:
            print_json(
                {
                    "output": str(result.output),
                    "architecture": result.architecture,
                    "gguf_architecture": result.gguf_architecture,
                    "outtype": result.outtype,
                    "tensors": result.n_tensors,
                    "parameters": result.n_parameters,
                    "bytes": result.output_bytes,
                    "tokenizer": result.tokenizer,
                    "general": result.general,
                    "seconds": round(result.seconds, 3),
                }
            )
            return
        if not quiet:
            log(
                f"converted {result.architecture} -> {result.gguf_architecture} "
                f"{result.outtype}: {result.n_tensors} tensors, "
                f"{result.n_parameters / 1e6:.1f}M parameters, "
                f"{result.output_bytes / 1e6:.1f} MB, tokenizer {result.tokenizer['model']}"
                f"/{result.tokenizer['pre']}, {result.seconds:.1f}s"
            )
        typer.echo(str(result.output))

    @app.command("quantize", help=QUANTIZE_HELP)
    def quantize_cmd(
        input_gguf: Path = typer.Argument(..., help="GGUF to quantize (f16/bf16/f32)."),
        type_name: str = typer.Option(..., "--type", "-t", help="Target type, e.g. Q4_K_M."),
        output: Path | None = typer.Option(
            None, "--output", "-o", help="GGUF to write (default: beside the input, named by type)."
        ),
        imatrix: Path | None = typer.Option(
            None, "--imatrix", help="Importance matrix (llama-imatrix output); needed by IQ types."
        ),
        threads: int = typer.Option(0, "--threads", help="Threads (default: all cores)."),
        allow_requantize: bool = typer.Option(
            False, "--allow-requantize", help="Accept an already-quantized input (loses quality)."
        ),
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ) -> None:
        from sovcli.console import log, print_json
        from sovcli.convert.progress import tensor_progress
        from sovcli.convert.quantize import normalize_type, quantize_gguf

        name = normalize_type(type_name)
        with tensor_progress(f"quantize {name}", enabled=not quiet and not json_out) as update:
            result = quantize_gguf(
                input_gguf,
                name,
                output,
                imatrix=imatrix,
                threads=threads,
                allow_requantize=allow_requantize,
                on_progress=update,
            )
        if json_out:
            print_json(result.as_dict())
            return
        if not quiet:
            log(
                f"quantized {result.input.name} -> {result.type}: "
                f"{result.input_bytes / 1e6:.1f} MB -> {result.output_bytes / 1e6:.1f} MB "
                f"in {result.seconds:.1f}s ({result.threads} threads)"
            )
        typer.echo(str(result.output))
