"""Knowledge-graph build parameters; the Dagster asset's run config is this same model."""

from pydantic import BaseModel, Field


class KGParams(BaseModel):
    half_life_days: float = Field(30.0, gt=0, description="Interaction weight halves every this many days before the as-of date.")
    price_bands: int = Field(5, ge=1, le=20, description="Items are put in this many price quantile bands.")
    keyword_min_items: int = Field(3, ge=1, description="A keyword must occur in at least this many items.")
    keyword_max_item_share: float = Field(0.1, gt=0, le=1, description="Keywords in more than this share of items are dropped.")
    keywords_per_item: int = Field(8, ge=0, description="At most this many keywords per item, rarest first.")
    cooccurrence_min_support: int = Field(3, ge=1, description="Item pairs must share at least this many baskets.")
    cooccurrence_top_n: int = Field(20, ge=0, description="Co-occurrence edges kept per item, best Jaccard first.")
    max_basket_items: int = Field(50, ge=2, description="Larger baskets are skipped for co-occurrence (bulk orders).")
    validation_days: int = Field(14, ge=1, description="The models of day D validate on the validation_days before "
                                 "their cutoff, training first on the KG as of D - validation_days: the partition D "
                                 "builds that snapshot too.")
    keep_days: int = Field(3, ge=0, description="Snapshots older than validation_days + keep_days before the newest "
                                                "one are deleted (the ones a build writes are always kept).")
    min_relation_triples: int = Field(1, ge=0, description="Asset check: every relation has at least this many triples.")
    max_relation_triples: int = Field(500_000_000, ge=1, description="Asset check: no relation has more triples than this.")
