"""Model and training settings; the Dagster assets' run configs are these same models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class EncoderConfig(BaseModel):
    dim: int = Field(64, ge=4, description="Embedding size of every entity.")
    layers: int = Field(2, ge=0, le=6, description="Propagation layers over the KG (0: plain embeddings, i.e. MF).")
    use_graph: bool = Field(True, description="Propagate over all KG relations; False keeps only the embeddings "
                            "(BPR-MF).")
    use_text: bool = Field(True, description="Fuse each item's projected text vector into its embedding (gated sum).")
    init_std: float = Field(0.1, gt=0)
    user_readout: bool = Field(True, description="Time-aware user side: a user also reads the items of their "
                                                 "target behaviour (purchases) through the snapshot's time-decayed "
                                                 "weights.")


class PretrainConfig(BaseModel):
    encoder: EncoderConfig = EncoderConfig()
    epochs: int = Field(20, ge=1, description="Passes over the interaction edges.")
    batch_size: int = Field(8192, ge=16, description="Interaction edges per step (one propagation per step).")
    max_steps_per_epoch: int = Field(64, ge=1, description="A whole-graph step propagates the whole KG, so on large "
                                                           "graphs the batch grows to keep an epoch to this many "
                                                           "steps (not with fanouts).")
    fanouts: list[int] | None = Field(None, description="Sampled-subgraph steps: each step embeds only the "
                                      "entities its losses read, from at most this many sampled neighbours per "
                                      "entity and layer (e.g. [10, 5]), for graphs too large to propagate whole at "
                                      "every step. None (default): every step propagates the whole KG.")
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(1e-6, ge=0, description="L2 on the embedding rows used in a step.")
    link_weight: float = Field(1.0, ge=0, description="Weight of link prediction on user->item edges.")
    link_loss: Literal["softmax", "bpr"] = Field("softmax", description="Link prediction as fine-tuning does it "
                                                 "(a sampled softmax over shared negatives), or BPR.")
    negatives: int = Field(1024, ge=1, description="Sampled items the link softmax shares as negatives per step.")
    loss_temperature: float = Field(0.1, gt=0, description="Temperature of the link softmax.")
    kg_weight: float = Field(0.5, ge=0, description="Weight of DistMult triple completion on attribute/keyword/"
                             "co-occurrence edges.")
    mask_weight: float = Field(0.5, ge=0, description="Weight of masked attribute prediction.")
    align_weight: float = Field(0.5, ge=0, description="Weight of text-graph InfoNCE alignment.")
    masked_relation: str | None = Field(None, description="Item relation to mask (default: the first item attribute relation).")
    mask_share: float = Field(0.15, gt=0, lt=1, description="Share of items whose masked attribute is hidden each epoch.")
    temperature: float = Field(0.1, gt=0, description="InfoNCE temperature.")
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N (UNIREC_DEVICE overrides auto).")
    world_size: int = Field(1, ge=1, description="Processes of data-parallel training (torchrun workers under "
                                                 "DistributedDataParallel, gloo on CPU, NCCL on CUDA); 1 trains in "
                                                 "the asset's own process.")


class FinetuneConfig(BaseModel):
    encoder: EncoderConfig = EncoderConfig()
    max_epochs: int = Field(40, ge=1)
    patience: int = Field(4, ge=1, description="Stop after this many epochs without a better validation Recall@20.")
    batch_size: int = Field(8192, ge=16)
    lr: float = Field(0.005, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    half_life_days: float = Field(60.0, gt=0, description="Recent purchases weigh more: weight halves every this many days.")
    loss: Literal["softmax", "bpr"] = Field("softmax", description="Sampled softmax over the batch's shared "
                                            "negatives, or BPR with one negative per pair.")
    loss_temperature: float = Field(0.1, gt=0, description="Temperature of the softmax over cosine similarities.")
    negatives: int = Field(1024, ge=1, description="Sampled items each step's softmax shares as negatives.")
    align_weight: float = Field(0.1, ge=0, description="Keep the text view aligned while fine-tuning (cold items).")
    temperature: float = Field(0.1, gt=0)
    world_size: int = Field(1, ge=1, description="Processes of data-parallel fine-tuning (torchrun workers under "
                                                 "DistributedDataParallel, as pretraining's world_size); 1 trains in "
                                                 "the asset's own process.")
    seed: int = 0
    device: str = "auto"
