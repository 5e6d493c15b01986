"""``{type: uppercase, field: NAME}``: upper-case one text field."""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from ags_etl.batch import FeatureBatch
from ags_etl.errors import ConfigError
from ags_etl.schema import LayerSchema
from ags_etl.transformers.base import Transformer


class Uppercase(Transformer):
    name: ClassVar[str] = "uppercase"
    keeps_geometry_position: ClassVar[bool] = True

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        field: str

    def __init__(self, field: str) -> None:
        self.field = field

    def bind(self, schema: LayerSchema) -> LayerSchema:
        if self.field not in [f.name for f in schema.fields]:
            raise ConfigError(f"uppercase: no field {self.field!r} in layer {schema.name!r}")
        return schema

    def __call__(self, batch: FeatureBatch) -> FeatureBatch:
        table = batch.attributes
        i = table.schema.get_field_index(self.field)
        column = pc.utf8_upper(table.column(i).cast(pa.string()))
        return batch.replace(attributes=table.set_column(i, self.field, column))
