"""Which localizer a sample gets: a chain of sources per data set, and the attention source.

``make_localizer`` builds one localizer per source the config's chains name (SAM, a model, a
maps folder: each loaded once) and a ``ChainLocalizer`` that hands every sample to the first
source of its data set's chain, and a sample that got no region there to the next one. A
failure (an unreadable image) is final: the next source would fail on the same file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from tasks.config import ConfigError, HeatmapConfig, LocalizeConfig
from tasks.localize.maps import map_peaks, smooth
from tasks.localize.regions import (
    AnnotationLocalizer,
    HeatmapLocalizer,
    LesionLabels,
    Localizer,
    Region,
    SamLocalizer,
    component_boxes,
    failed,
    map_region,
    no_region,
)


def make_localizer(config: LocalizeConfig) -> ChainLocalizer:
    lesions = LesionLabels(config.lesion_terms)
    needs_sam = "sam" in config.sources or ("attention" in config.sources and config.attention.refine == "sam")
    sam = SamLocalizer(config.sam, config.heatmap, lesions) if needs_sam else None
    built: dict[str, Localizer] = {}
    for source in config.sources:
        if source == "annotation":
            built[source] = AnnotationLocalizer(config.annotation, lesions)
        elif source == "heatmap":
            built[source] = HeatmapLocalizer(config.heatmap)
        elif source == "sam":
            assert sam is not None
            built[source] = sam
        else:  # one SAM serves both as a source and as the attention map's refiner
            built[source] = AttentionLocalizer(config, sam if config.attention.refine == "sam" else None)
    return ChainLocalizer(config, built)


class ChainLocalizer:
    """Every sample through its data set's chain (``LocalizeConfig.chain_for``)."""

    def __init__(self, config: LocalizeConfig, localizers: Mapping[str, Localizer]):
        self.config = config
        self.localizers = localizers
        self.source = "+".join(config.default_chain)

    def locate(self, rows: Sequence[Mapping[str, Any]]) -> list[Region]:
        chains = [self.config.chain_for(row["dataset"]) for row in rows]
        regions: list[Region | None] = [None] * len(rows)
        pending = list(range(len(rows)))
        for step in range(max(len(chain) for chain in chains) if chains else 0):
            by_source: dict[str, list[int]] = {}
            for i in pending:
                if step < len(chains[i]):
                    by_source.setdefault(chains[i][step], []).append(i)
            for source, indices in by_source.items():
                found = self.localizers[source].locate([rows[i] for i in indices])
                for i, region in zip(indices, found):
                    # A source may name a finer one (attention+sam: the attention peak refined by SAM).
                    regions[i] = replace(region, source=region.source or source)
            pending = [i for i in pending if regions[i].status == "no_region" and step + 1 < len(chains[i])]
        return regions


class AttentionLocalizer:
    """A region from the aligned model's attention map (models/attention.py), thresholded by the
    ``heatmap`` rules; its confidence is the map's contrast. With ``attention.refine: sam`` the map's
    peak is SAM's point prompt: SAM's mask (source ``attention+sam``, its predicted IoU the
    confidence) when it holds the peak, else the thresholded map, noted ``sam_fallback_<why>``."""

    source = "attention"

    def __init__(self, config: LocalizeConfig, refiner: SamLocalizer | None = None):
        from models import attention

        self.settings = config.attention
        self.heatmap: HeatmapConfig = config.heatmap
        self.model = attention.load(self.settings.model_path, self.settings.device)
        llava = self.model.family.name == "llava"
        layer = getattr(self.model.model.config, "vision_feature_layer", None)
        # auto: through the tower where it can be rolled out (a LLaVA whose features come from one layer).
        rollable = llava and isinstance(layer, int)
        tower = rollable if self.settings.through_tower == "auto" else self.settings.through_tower
        if tower and not rollable:
            raise ConfigError(
                "localize.attention.through_tower: only a llava-family model whose image features come from one "
                f"tower layer, not {self.model.family.name} (vision_feature_layer {layer!r})"
            )
        self.refiner = refiner
        self.how = (self.settings.method, tower)

    def locate(self, rows: Sequence[Mapping[str, Any]]) -> list[Region]:
        from models import attention

        regions: list[Region] = []
        for start in range(0, len(rows), self.settings.batch_size):
            chunk = rows[start : start + self.settings.batch_size]
            try:
                questions, answers = [r["question"] for r in chunk], [r["answer"] for r in chunk]
                paths = [r["image_path"] for r in chunk]
                maps = attention.relevance_maps(self.model, questions, answers, paths, *self.how)
            except (OSError, ValueError, SyntaxError, RuntimeError):
                # One bad file (or one sample too long for memory) fails the batch's call: retry one
                # by one so only it fails.
                maps = [self.one(attention, row) for row in chunk]
            saliencies = [self.saliency(m, row) for m, row in zip(maps, chunk)]
            found = [
                s if isinstance(s, Region) else map_region(s, self.heatmap, None, "flat_attention") for s in saliencies
            ]
            regions += self.refine(chunk, maps, saliencies, found) if self.refiner is not None else found
        return regions

    def one(self, attention: Any, row: Mapping[str, Any]) -> Any:
        try:
            question, answer, path = [row["question"]], [row["answer"]], [row["image_path"]]
            return attention.relevance_maps(self.model, question, answer, path, *self.how)[0]
        except (OSError, ValueError, SyntaxError):
            return failed("unreadable_image")
        except RuntimeError:  # e.g. out of memory: this sample fails, the stage goes on
            return failed("attention_error")

    def saliency(self, relevance: Any, row: Mapping[str, Any]) -> np.ndarray | Region:
        """The map smoothed onto the image, or the Region that says why there is none."""
        if isinstance(relevance, Region):
            return relevance
        if relevance is None:
            return no_region("attention_grid_unknown")
        saliency = smooth(relevance, int(row["height"]), int(row["width"]), self.heatmap)
        return no_region("flat_attention") if saliency is None else saliency

    def refine(
        self, rows: Sequence[Mapping[str, Any]], maps: list, saliencies: list, found: list[Region]
    ) -> list[Region]:
        """SAM prompted at each found region's map peak, the whole chunk in one batched call."""
        from models.sam import Prompt

        peaks: list[tuple[int, int] | None] = [None] * len(rows)
        prompts: list[Any] = [None] * len(rows)
        for i, (relevance, saliency, region) in enumerate(zip(maps, saliencies, found)):
            if region.status == "ok":
                (y, x) = peaks[i] = map_peaks(saliency, relevance.shape, 1)[0]
                prompts[i] = Prompt(points=np.asarray([[float(x), float(y)]]))
        segmented = self.refiner.segment(rows, prompts, [None if p else region for p, region in zip(prompts, found)])
        return [
            region if peak is None else refined(region, by_sam, peak)
            for region, by_sam, peak in zip(found, segmented, peaks)
        ]


def refined(attention_region: Region, by_sam: Region, peak: tuple[int, int]) -> Region:
    """SAM's region when it holds the peak that prompted it; else the attention region, noted why."""
    if by_sam.status != "ok":
        why = by_sam.reason  # sam_error, unreadable_image
    elif not by_sam.mask.any():
        why = "empty_mask"
    elif not by_sam.mask[peak]:
        why = "peak_outside_mask"
    else:
        return replace(by_sam, boxes=component_boxes(by_sam.mask), source="attention+sam")
    return replace(attention_region, reason=f"sam_fallback_{why}")
