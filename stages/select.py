"""The ``select`` map stage: keep the records a DuckDB expression is true for (``schemas.select_expr``); the others
are ``not_selected`` rows whose detail is the expression. A graph branches with it: two selects reading one stage
split its records (images to one shard set, audio to another). DuckDB reads only the columns the expression names
from the Arrow batch: media bytes stay where they are."""

from __future__ import annotations

import pyarrow as pa

from mmcurate.schemas.reasons import Reason
from mmcurate.schemas.select_expr import connect, selection
from mmcurate.schemas.stage_configs import SelectConfig
from mmcurate.stages.base import BatchStage, Decisions


class SelectStage(BatchStage[SelectConfig]):
    def process_batch(self, batch: pa.Table) -> pa.Table:
        import pyarrow.compute as pc

        with connect() as con:  # external access off: the expression reads this batch and nothing else
            keep = selection(con, batch, self.config.where).to_arrow_table()["keep"]
        return Decisions(batch).reject(pc.invert(keep), Reason.NOT_SELECTED, f"where {self.config.where}").outcomes()
