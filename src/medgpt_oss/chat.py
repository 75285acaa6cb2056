"""Ask a checkpoint a question about one or more images, streaming the answer.

    python -m medgpt_oss.chat ckpt=<stage .ckpt> image=cxr.png "Is there a pleural effusion?"
    python -m medgpt_oss.chat ckpt=<ckpt> image=frontal.dcm image=lateral.dcm "Write the findings."
    python -m medgpt_oss.chat ckpt=<ckpt> "What is the first-line treatment of community-acquired pneumonia?"

Options (key=value): ckpt (required), image (repeatable; png/jpg/dcm), max_new_tokens (512),
device (auto), system (a system prompt). Everything else is the question.
"""

from __future__ import annotations

import sys
from pathlib import Path

USAGE = __doc__


def parse_args(argv: list[str]) -> tuple[dict[str, str], list[str], str]:
    """key=value options, the images in order, and the question (the remaining words)."""
    options: dict[str, str] = {}
    images: list[str] = []
    words: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key == "image":
            images.append(value)
        elif sep and key in ("ckpt", "max_new_tokens", "device", "system"):
            options[key] = value
        else:
            words.append(arg)
    return options, images, " ".join(words).strip()


def resolved_images(images: list[str]) -> list[str]:
    """Absolute image paths; the training loader reads PNG/JPEG of any mode and DICOM itself."""
    for path in images:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image '{path}' does not exist")
    return [str(Path(path).resolve()) for path in images]


def chat(argv: list[str]) -> str:
    """Stream the model's reply to the question and return it (see :func:`main` for its final answer)."""
    from transformers import TextStreamer

    from medgpt_oss.eval.generation import Generator, load_vlm, resolve_device, training_image_options

    options, images, question = parse_args(argv)
    if "ckpt" not in options or not question:
        raise ValueError("need ckpt=<checkpoint> and a question\n" + USAGE)
    paths = resolved_images(images)
    vlm = load_vlm(options["ckpt"], resolve_device(options.get("device", "auto")))
    # Tiles and DICOM rendering as the checkpoint's training run had them.
    generator = Generator(vlm, "/", max_new_tokens=int(options.get("max_new_tokens", 512)),
                          system_prompt=options.get("system"), **training_image_options(options["ckpt"]))
    prompt = "<image>\n" * len(paths) + question
    record = {"id": "chat", "image": paths,
              "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": "-"}]}
    # The reply streams as the model writes it, channel headers and control tokens included.
    streamer = TextStreamer(generator.tokenizer, skip_prompt=True, skip_special_tokens=False)
    (reply,) = generator.replies([generator.prepare(record)], streamer=streamer)
    return reply


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    try:
        reply = chat(argv)
    except (ValueError, FileNotFoundError, NotImplementedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    from medgpt_oss.harmony import final_answer

    answer = final_answer(reply)
    print(f"\nanswer: {answer}" if answer is not None else "\n(the reply has no final-channel answer)")


if __name__ == "__main__":
    main()
