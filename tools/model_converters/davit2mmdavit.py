#!/usr/bin/env python
"""Convert an official, timm or mmpretrain DaViT checkpoint to mmdavit keys.

    python tools/model_converters/davit2mmdavit.py davit_tiny_official.pth checkpoints/davit_t.pth

Not required for training (``init_cfg=dict(type='Pretrained', checkpoint=...)`` converts on the fly), but
it makes a checkpoint that loads with plain ``load_state_dict`` and shows what a file holds.
"""
import argparse
import sys

import torch

from mmdavit.models.checkpoints import (CONVERSION_RULES, MMDAVIT_KEY, convert_state_dict, read_checkpoint,
                                        strip_prefix, unwrap_checkpoint)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='source checkpoint (.pth / .pt)')
    parser.add_argument('dst', help='where to write the mmdavit checkpoint')
    parser.add_argument('--format', default='auto', choices=['auto', *CONVERSION_RULES],
                        help='source key format (default: detect)')
    parser.add_argument('--prefix', default=None,
                        help='prefix of the backbone keys in SRC (default: "backbone." when present)')
    args = parser.parse_args()

    state, outside = strip_prefix(unwrap_checkpoint(read_checkpoint(args.src)), args.prefix)
    converted, src_format = convert_state_dict(state, args.format)
    backbone = [k for k in converted if MMDAVIT_KEY.match(k)]
    if not backbone:
        print(f'error: no tensor of {args.src} is a DaViT backbone tensor after {src_format} conversion '
              f'(first keys: {", ".join(list(converted)[:4])}); check --format / --prefix', file=sys.stderr)
        return 1
    others = sorted(set(converted) - set(backbone))
    torch.save({'state_dict': converted, 'meta': {'source': args.src, 'source_format': src_format}}, args.dst)
    print(f'{args.src}: {src_format} format, {len(backbone)} backbone tensors written to {args.dst}')
    if outside:
        print(f'dropped {outside} keys outside the backbone prefix')
    if others:
        print(f'kept {len(others)} non-backbone keys (reported as unexpected when loaded): {", ".join(others)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
