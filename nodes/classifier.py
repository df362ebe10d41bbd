"""Classifier loader: a timm model (`.safetensors` + `.json` sidecar) from models/classifiers/."""

from __future__ import annotations

import os

import folder_paths
import torch

from ..higfa.classifier import ClassifierEnsemble, load_classifier
from ._comfy import CATEGORY, CLASSIFIER, io

# ComfyUI registers models/classifiers for extension-less files only. Keep its paths (they already
# include extra_model_paths.yaml entries, applied before custom nodes load) and add .safetensors.
_paths, _exts = folder_paths.folder_names_and_paths.get(
    "classifiers", ([os.path.join(folder_paths.models_dir, "classifiers")], set()))
folder_paths.folder_names_and_paths["classifiers"] = (_paths, set(_exts) | {".safetensors"})


class HiGFAClassifierLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HiGFA_ClassifierLoader",
            display_name="HiGFA Classifier Loader",
            category=f"{CATEGORY}/loaders",
            description="Loads a fine-grained timm classifier from models/classifiers/: <name>.safetensors plus a "
                        "<name>.json sidecar (architecture, class_names, input_size, mean, std). Kept on the CPU "
                        "here; the sampler moves it to the sampling device. Make one with `higfa train-classifier` "
                        "or `higfa import-classifier` (docs/classifiers.md).",
            inputs=[io.Combo.Input("classifier_name", options=folder_paths.get_filename_list("classifiers"),
                                   tooltip="A .safetensors file in models/classifiers/ (or a 'classifiers:' path "
                                           "of extra_model_paths.yaml) with its .json sidecar beside it.")],
            outputs=[CLASSIFIER.Output(display_name="classifier"),
                     io.String.Output(display_name="class_names", tooltip="One class name per line, in index order."),
                     io.String.Output(display_name="info", tooltip="Architecture, class count and the validation "
                                      "accuracy its sidecar records (written by higfa train-classifier / "
                                      "import-classifier; see docs/classifiers.md).")],
        )

    @classmethod
    def execute(cls, classifier_name: str) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("classifiers", classifier_name)
        # Nodes run under inference_mode; weights made there could never take part in a backward pass.
        with torch.inference_mode(False):
            clf = load_classifier(path, device="cpu")
            _probe(clf, classifier_name)
        clf.source = classifier_name  # how a trace names it when it judges (nodes/cfg_guider._judge_name)
        return io.NodeOutput(clf, "\n".join(clf.class_names), clf.summary())


def _probe(clf, name: str) -> None:
    """One forward at the sidecar's input size, so a wrong size fails here with a clear message."""
    try:
        with torch.no_grad():
            clf(torch.zeros(1, 3, *clf.input_size))
    except (RuntimeError, AssertionError, ValueError) as e:
        raise ValueError(f"classifier {name}: its model rejects {list(clf.input_size)} images ({e}). Set "
                         f"'input_size' in its .json sidecar to the size the {clf.architecture} was trained at "
                         f"(or 'model_kwargs', e.g. img_size for a ViT)") from e


class HiGFAClassifierEnsemble(io.ComfyNode):
    """Several loaded classifiers as one (higfa.classifier.ClassifierEnsemble): a guide or a judge."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        member = "A classifier from HiGFA Classifier Loader; every member must have the same classes in the same order."
        return io.Schema(
            node_id="HiGFA_ClassifierEnsemble",
            display_name="HiGFA Classifier Ensemble",
            category=f"{CATEGORY}/loaders",
            description="Two to four classifiers as one: the mean of their log-probabilities (a geometric mean of "
                        "their beliefs). As the guide, only the push they agree on is applied: a few-shot "
                        "classifier's push is partly adversarial and such directions carry over little between "
                        "differently trained networks (docs/method.md, Ensemble guide). Members may differ in "
                        "architecture and input size. A judge should not be a member of the guide.",
            inputs=[CLASSIFIER.Input("classifier_1", tooltip=member),
                    CLASSIFIER.Input("classifier_2", tooltip=member),
                    CLASSIFIER.Input("classifier_3", optional=True, tooltip=member + " Optional."),
                    CLASSIFIER.Input("classifier_4", optional=True, tooltip=member + " Optional.")],
            outputs=[CLASSIFIER.Output(display_name="classifier"),
                     io.String.Output(display_name="info", tooltip="Each member's architecture, class count and "
                                      "recorded validation accuracy.")],
        )

    @classmethod
    def execute(cls, classifier_1, classifier_2, classifier_3=None, classifier_4=None) -> io.NodeOutput:
        members = [c for c in (classifier_1, classifier_2, classifier_3, classifier_4) if c is not None]
        with torch.inference_mode(False):
            ens = ClassifierEnsemble(members)
        ens.source = "+".join(str(getattr(m, "source", m.architecture)) for m in members)
        return io.NodeOutput(ens, ens.summary())
