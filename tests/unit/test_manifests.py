from __future__ import annotations

import pytest

from unirec_dist.errors import UnirecError


@pytest.mark.parametrize("text, msg", [("[1, 2]", "expected a JSON object, got list"), ("{oops", "not valid JSON"),
                                       (b"\xff\xfe{}", "not valid JSON")])
def test_manifests_that_are_not_json_objects_are_one_line_errors(tmp_path, text, msg):
    """Dataset, checkpoint and bundle manifests share one reader: a list or garbage in manifest.json
    is the user's file problem (one line), never an AttributeError traceback."""
    from unirec_dist.checkpoint.dcp import read_manifest
    from unirec_dist.data.dataset import PreparedDataset
    from unirec_dist.serving.bundle import read_bundle_manifest

    (tmp_path / "manifest.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    for reader in (read_manifest, PreparedDataset.open, read_bundle_manifest):
        with pytest.raises(UnirecError, match=msg) as e:
            reader(tmp_path)
        assert "\n" not in str(e.value) and "manifest.json" in str(e.value)
