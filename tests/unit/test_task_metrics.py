"""metrics/pointwise.py: the pointwise tasks read each query's first target (rating)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from unirec_dist.metrics.pointwise import first_values


def test_first_value_of_each_list_nan_when_empty_or_null():
    col = pa.chunked_array([pa.array([[4.0, 1.0], [], None], pa.list_(pa.float32())),
                            pa.array([[2.5], [3.0, 5.0, 1.0]], pa.list_(pa.float32()))])
    np.testing.assert_array_equal(first_values(col), [4.0, np.nan, np.nan, 2.5, 3.0])
