"""CLI: `sovcli convert` (HF safetensors -> GGUF) and `sovcli quantize` (llama.cpp quantizer).

Heavy imports (numpy, gguf, llama_cpp) happen inside the commands so `sovcli --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sovcli.cli.options import JsonOption, QuietOption

OuttypeOption = Annotated[
    str,
    typer.Option(
        "--outtype", "-t", help="f16, bf16, f32 or q8_0.", case_sensitive=False, show_default=True
    ),
]
PreTokenizerOption = Annotated[
    str | None,
    typer.Option(
        "--pre-tokenizer",
        help="Force llama.cpp's BPE pre-tokenizer type (e.g. llama-bpe, qwen2) when it "
        "cannot be identified.",
    ),
]
TypeOption = Annotated[
    str, typer.Option("--type", "-t", help="Target type, e.g. Q4_K_M.", show_default=False)
]
ImatrixOption = Annotated[
    Path | None,
    typer.Option("--imatrix", help="Importance matrix (llama-imatrix output); needed by IQ types."),
]
# Not the shared ThreadsOption: `-t` is --type here.
QuantizeThreadsOption = Annotated[
    int | None, typer.Option("--threads", min=1, help="Threads (default: physical cores).")
]
RequantizeOption = Annotated[
    bool,
    typer.Option("--allow-requantize", help="Accept an already-quantized input (loses quality)."),
]


def convert_command(
    hf_dir: Annotated[Path, typer.Argument(help="Hugging Face checkpoint folder.")],
    outtype: OuttypeOption = "f16",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="GGUF to write (default: ./<folder>-<outtype>.gguf)."),
    ] = None,
    pre_tokenizer: PreTokenizerOption = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Convert a Hugging Face safetensors checkpoint folder to a GGUF file.

    Reads config.json, *.safetensors (single or sharded), the tokenizer (tokenizer.json,
    tokenizer.model or tekken.json), tokenizer_config.json and generation_config.json.
    Streams one tensor at a time (memory stays near the largest tensor) and writes the
    file atomically.

    Supported: Llama 2/3.x, Mistral/Ministral, Mixtral, Qwen2/2.5, Qwen3, Gemma 2/3 (text),
    Phi-3.

    \b
    Examples:
      sovcli convert ./SmolLM2-135M-Instruct -o smollm2-f16.gguf
      sovcli convert ./Qwen2.5-0.5B-Instruct --outtype bf16 --json
      sovcli quantize smollm2-f16.gguf --type Q4_K_M
    """
    from sovcli.cli.output import log, print_json
    from sovcli.cli.progress import make_progress
    from sovcli.convert.converter import convert_checkpoint

    outtype = outtype.lower()
    target = output or Path.cwd() / f"{hf_dir.resolve().name}-{outtype}.gguf"
    with make_progress(quiet or json_output) as progress:
        result = convert_checkpoint(
            hf_dir, target, outtype=outtype, pre_tokenizer=pre_tokenizer, progress=progress
        )
    if json_output:
        print_json(result.as_dict())
        return
    if not quiet:
        tokenizer = f"{result.tokenizer['model']}/{result.tokenizer['pre']}"
        log(
            f"converted {result.architecture} -> {result.gguf_architecture} {result.outtype}: "
            f"{result.n_tensors} tensors, {result.n_parameters / 1e6:.1f}M parameters"
        )
        log(f"{result.output_bytes / 1e6:.1f} MB, tokenizer {tokenizer}, {result.seconds:.1f}s")
    typer.echo(str(result.output))


def quantize_command(
    input_gguf: Annotated[Path, typer.Argument(help="GGUF to quantize (f16/bf16/f32).")],
    type_name: TypeOption,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="GGUF to write (default: beside the input, named by type)."
        ),
    ] = None,
    imatrix: ImatrixOption = None,
    threads: QuantizeThreadsOption = None,
    allow_requantize: RequantizeOption = False,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Quantize a GGUF with llama.cpp's own quantizer.

    Types: Q4_K_M (good default), Q5_K_M, Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K,
    Q3_K_S/M/L, Q4_K_S, Q5_K_S, F16, BF16, F32, and the IQ types (IQ1_S ... IQ4_XS, with
    --imatrix only).

    \b
    Examples:
      sovcli quantize smollm2-f16.gguf --type Q4_K_M
      sovcli quantize smollm2-f16.gguf --type Q8_0 -o smollm2-q8.gguf --threads 4
      sovcli quantize model-f16.gguf --type IQ4_XS --imatrix model.imatrix.gguf
    """
    from sovcli.cli.output import log, print_json
    from sovcli.cli.progress import make_progress
    from sovcli.convert.quantize import normalize_type, quantize_gguf

    name = normalize_type(type_name)
    with make_progress(quiet or json_output) as progress:
        result = quantize_gguf(
            input_gguf,
            name,
            output,
            imatrix=imatrix,
            threads=threads,
            allow_requantize=allow_requantize,
            progress=progress,
        )
    if json_output:
        print_json(result.as_dict())
        return
    if not quiet:
        log(
            f"quantized to {result.type}: {result.input_bytes / 1e6:.1f} MB -> "
            f"{result.output_bytes / 1e6:.1f} MB in {result.seconds:.1f}s "
            f"({result.threads} threads)"
        )
    typer.echo(str(result.output))


COMMANDS = {"convert": convert_command, "quantize": quantize_command}
