#!/usr/bin/env python
"""Convert an official or timm DaViT ImageNet classifier to an mmpretrain ImageClassifier checkpoint.

    python tools/model_converters/davit_cls2mmpretrain.py davit_tiny_official.pth checkpoints/davit_t_in1k.pth
    python tools/test.py configs/classification/davit_t_in1k.py checkpoints/davit_t_in1k.pth

Backbone keys go through ``mmdavit.models.checkpoints.convert_state_dict`` (under ``backbone.``); the head
(official ``norms`` + ``head``, timm ``head.norm`` + ``head.fc``) becomes ``DaViTClsHead``'s ``head.norm`` +
``head.fc``. The result loads with ``load_from`` / ``tools/test.py`` and no missing or unexpected key.
"""
import argparse
import sys

import torch

from mmdavit.models.checkpoints import read_checkpoint, unwrap_checkpoint
from mmdavit.models.cls_head import convert_classifier_state_dict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='official or timm DaViT classifier checkpoint (.pth / .pt)')
    parser.add_argument('dst', help='where to write the mmpretrain ImageClassifier checkpoint')
    args = parser.parse_args()

    try:
        state_dict, src_format = convert_classifier_state_dict(unwrap_checkpoint(read_checkpoint(args.src)))
    except ValueError as error:
        print(f'error: {args.src}: {error}', file=sys.stderr)
        return 1
    meta = {'source': args.src, 'source_format': src_format}
    num_classes = state_dict['head.fc.weight'].shape[0]
    if num_classes == 1000:  # class names for tools/infer.py's pictures
        from mmpretrain.datasets.categories import IMAGENET_CATEGORIES
        meta['dataset_meta'] = {'classes': list(IMAGENET_CATEGORIES)}
    torch.save({'state_dict': state_dict, 'meta': meta}, args.dst)
    backbone = sum(k.startswith('backbone.') for k in state_dict)
    print(f'{args.src}: {src_format} classifier, {backbone} backbone + {len(state_dict) - backbone} head tensors '
          f'({num_classes} classes) written to {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
