# The admin API's suppression list against real traffic: the address the upstream
# hard-bounced is listed (as `relay suppression list --json`), behind the admin token.
from __future__ import annotations

import json
from pathlib import Path

from tests.admin import traffic
from tests.admin.test_admin_http import get, get_json


async def test_api_lists_the_hard_bounced_address(tmp_path: Path) -> None:
    t = await traffic.start(tmp_path)
    try:
        await traffic.send_known_traffic(t)
        doc = await get_json(f"{t.admin}/api/suppression")
        assert doc["total"] == 1
        [entry] = doc["suppressed"]
        assert (entry["emailAddress"], entry["reason"], entry["messageId"]) == ("nobody@example.org", "BOUNCE",
                                                                               t.news_id)
        assert (await get_json(f"{t.admin}/api/suppression?q=alice"))["suppressed"] == []
        status, _, body = await get(f"{t.admin}/api/suppression?limit=0")
        assert status == 400 and "limit" in json.loads(body)["error"]
        status, _, body = await get(f"{t.admin}/api/suppression?color=red")
        assert status == 400
    finally:
        await traffic.stop(t)


async def test_api_needs_the_token(tmp_path: Path) -> None:
    t = await traffic.start(tmp_path, token=traffic.TOKEN)
    try:
        assert (await get(f"{t.admin}/api/suppression"))[0] == 401
        assert (await get(f"{t.admin}/suppression"))[0] == 401
        status, _, body = await get(f"{t.admin}/api/suppression", headers={"Authorization": f"Bearer {traffic.TOKEN}"})
        assert status == 200 and json.loads(body) == {"suppressed": [], "total": 0}
    finally:
        await traffic.stop(t)
