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

from mmdavit.models.checkpoints import check_destination, one_line, read_checkpoint, unwrap_checkpoint, write_checkpoint
from mmdavit.models.cls_head import convert_classifier_state_dict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='official or timm DaViT classifier checkpoint (.pth / .pt)')
    parser.add_argument('dst', help='where to write the mmpretrain ImageClassifier checkpoint (.pth)')
    args = parser.parse_args()

    try:
        dst = check_destination(args.dst)
        state_dict, src_format = convert_classifier_state_dict(unwrap_checkpoint(read_checkpoint(args.src)))
        meta = {'source': args.src, 'source_format': src_format}
        num_classes = state_dict['head.fc.weight'].shape[0]
        if num_classes == 1000:  # class names for tools/infer.py's pictures
            from mmpretrain.datasets.categories import IMAGENET_CATEGORIES
            meta['dataset_meta'] = {'classes': list(IMAGENET_CATEGORIES)}
        write_checkpoint(state_dict, dst, meta)  # via a temporary file: DST may be SRC
    except (OSError, ValueError) as error:  # bad paths and files: one line, no traceback
        print(f'error: {args.src}: {one_line(error)}', file=sys.stderr)
        return 1
    backbone = sum(k.startswith('backbone.') for k in state_dict)
    print(f'{args.src}: {src_format} classifier, {backbone} backbone + {len(state_dict) - backbone} head tensors '
          f'({num_classes} classes) written to {dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
