# Copyright 2026 The hf-imgcap authors. Apache-2.0.
"""`evaluate` module: COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D) as captioning papers report them.

Self-contained (it needs only `evaluate` and `pycocoevalcap`, not hf-imgcap), so this folder can be published as a
Hub metric and loaded by path or Hub id::

    import evaluate
    metric = evaluate.load("path/to/caption_metrics")  # the folder; the file name must equal the folder name
    metric.compute(predictions=["a dog runs"], references=[["a dog is running", "a brown dog runs"]])

The scores come from `scoring.py` and `tokenization.py` beside this file, which are also what hf-imgcap's
`hf_imgcap.evaluation.caption_metrics` uses: one implementation.
"""

import datasets
import evaluate

from .scoring import score_captions

# evaluate.load copies the local files that this script imports (not those its imports import), so every local
# file is imported here; evaluate reads any comment on an import line as a download URL, hence none there.
from .tokenization import TOKENIZER_LABELS

_DESCRIPTION = """\
Image-caption metrics computed with the MS COCO caption evaluation code (pycocoevalcap), on text tokenised as
pycocoevalcap tokenises it (its Stanford PTB tokenizer on Java, lowercased, its punctuation list dropped; without
Java a pure-Python approximation, flagged in the result's `tokenizer`):

- bleu_1 .. bleu_4: corpus-level BLEU with the brevity penalty against the closest reference length
  ("COCO-caption BLEU"; differs from sacrebleu and from the Hub's "bleu", which uses the shortest reference);
- meteor: METEOR 1.5 (needs Java; left out when Java is absent unless meteor=True is passed);
- rouge_l: ROUGE-L F-measure (beta = 1.2) against the best reference, averaged over images;
- cider: CIDEr-D, with idf computed from the references being scored.

Scores are on pycocoevalcap's scale (0-1; CIDEr can exceed 1). Multiply by 100 for the numbers in paper tables.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one generated caption per image (may be empty).
    references (`list` of `list` of `str`): the reference captions of each image (at least one per image).
    meteor (`bool`, optional): True forces METEOR (raises if Java fails), False skips it, None (default) runs it
        when Java is on PATH.
    tokenizer (`str`, optional): "ptb" requires the Java PTB tokenizer, "python" uses the approximation, None
        (default) uses Java when it can run and the approximation otherwise.
Returns:
    `dict` with `bleu_1`, `bleu_2`, `bleu_3`, `bleu_4`, `rouge_l`, `cider` and, when computed, `meteor` (floats),
    and `tokenizer`: "ptb" when the scores are pycocoevalcap's, otherwise a label saying they are approximate.
Examples:
    >>> metric = evaluate.load("path/to/caption_metrics")
    >>> metric.compute(predictions=["a dog runs on the grass"],
    ...                references=[["a dog runs on the grass", "a brown dog is running"]], meteor=False)["rouge_l"]
    1.0
"""

_CITATION = """\
@inproceedings{papineni2002bleu,
  title={BLEU: a Method for Automatic Evaluation of Machine Translation},
  author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing},
  booktitle={Proceedings of the 40th Annual Meeting of the Association for Computational Linguistics},
  pages={311--318},
  year={2002}
}
@inproceedings{banerjee2005meteor,
  title={METEOR: An Automatic Metric for MT Evaluation with Improved Correlation with Human Judgments},
  author={Banerjee, Satanjeev and Lavie, Alon},
  booktitle={Proceedings of the ACL Workshop on Intrinsic and Extrinsic Evaluation Measures for Machine
             Translation and/or Summarization},
  pages={65--72},
  year={2005}
}
@inproceedings{lin2004rouge,
  title={ROUGE: A Package for Automatic Evaluation of Summaries},
  author={Lin, Chin-Yew},
  booktitle={Text Summarization Branches Out},
  pages={74--81},
  year={2004}
}
@inproceedings{vedantam2015cider,
  title={CIDEr: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={4566--4575},
  year={2015}
}
@article{chen2015microsoft,
  title={Microsoft COCO Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh and
          Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  journal={arXiv preprint arXiv:1504.00325},
  year={2015}
}
"""


class CaptionMetrics(evaluate.Metric):
    """COCO caption metrics; see `scoring.compute_caption_metrics` for the exact conventions."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            codebase_urls=["https://github.com/salaniz/pycocoevalcap", "https://github.com/tylin/coco-caption"],
            reference_urls=[
                "https://aclanthology.org/P02-1040/",
                "https://aclanthology.org/W05-0909/",
                "https://aclanthology.org/W04-1013/",
                "https://arxiv.org/abs/1411.5726",
                "https://arxiv.org/abs/1504.00325",
            ],
        )

    def _compute(self, predictions, references, meteor=None, tokenizer=None) -> dict:
        result = score_captions(list(predictions), [list(refs) for refs in references], meteor=meteor, tokenizer=tokenizer)
        return {**result.scores, "tokenizer": TOKENIZER_LABELS[result.tokenizer]}
