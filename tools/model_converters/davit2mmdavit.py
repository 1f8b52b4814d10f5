#!/usr/bin/env python
"""Convert a DaViT checkpoint in any supported format (official, timm, mmpretrain, Florence-2) to mmdavit keys.

    python tools/model_converters/davit2mmdavit.py davit_tiny_official.pth checkpoints/davit_t.pth
    python tools/model_converters/davit2mmdavit.py hf-hub://microsoft/Florence-2-base checkpoints/fl2_b.safetensors

SRC is a .pth / .pt / .bin or .safetensors file, a sharded checkpoint's *.index.json, or an hf-hub:// name;
of a whole-model checkpoint (detector, Florence-2 VLM) only the backbone's tensors are read and written. DST
ending in .safetensors is written as safetensors, anything else with torch.save, through a temporary file
beside DST that replaces it once complete (so DST may be SRC). Formats and names: docs/checkpoint-formats.md.

Not required for training (``init_cfg=dict(type='Pretrained', checkpoint=...)`` converts on the fly), but
it makes a checkpoint that loads with plain ``load_state_dict`` and shows what a file holds.
"""
import argparse
import sys

from mmdavit.models.checkpoints import (CONVERSION_RULES, MMDAVIT_KEY, backbone_keys, check_destination, convert_keys,
                                        one_line, open_checkpoint, write_checkpoint)


def convert(src: str, dst: str, src_format: str = 'auto', prefix: str = None) -> None:
    dst = check_destination(dst)
    source = open_checkpoint(src)
    inside, outside, prefix = backbone_keys(source.keys(), prefix)
    renamed, src_format = convert_keys(inside, src_format)
    backbone = [new for new in renamed.values() if MMDAVIT_KEY.match(new)]
    if not backbone:
        raise ValueError(f'no tensor of {src} is a DaViT backbone tensor after {src_format} conversion (first '
                         f'keys: {", ".join(list(renamed.values())[:4])}); check --format / --prefix')
    tensors = source.read(inside.values())
    converted = {renamed[key]: tensors[original] for key, original in inside.items()}
    write_checkpoint(converted, dst, {'source': src, 'source_format': src_format})
    others = sorted(set(converted) - set(backbone))
    print(f'{src}: {src_format} format, {len(backbone)} backbone tensors written to {dst}')
    if outside:
        print(f'dropped {outside} keys outside the backbone prefix "{prefix}"')
    if others:
        print(f'kept {len(others)} non-backbone keys (reported as unexpected when loaded): {", ".join(others)}')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='source checkpoint: .pth/.pt/.bin, .safetensors, *.index.json or hf-hub://...')
    parser.add_argument('dst', help='where to write the mmdavit checkpoint (.safetensors or .pth)')
    parser.add_argument('--format', default='auto', choices=['auto', *CONVERSION_RULES],
                        help='source key format (default: detect)')
    parser.add_argument('--prefix', default=None,
                        help='prefix of the backbone keys in SRC (default: the first of "backbone.", '
                             '"model.vision_tower.", "vision_tower." present)')
    args = parser.parse_args()
    try:
        convert(args.src, args.dst, args.format, args.prefix)
    except (OSError, ValueError) as error:  # bad paths and files: one line, no traceback
        print(f'error: {one_line(error)}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
