"""The two ImageService calls `mirrors migrate` needs beyond the probe client: ListImages (to find
an image of a mirrored registry on the node) and PullImage (the real pull that verifies the
migration). Kept beside the flow, on the probe client's channel and error handling, so the
daemon's CRI probe stays as small as the daemon needs (as FlowBus does for systemd).
"""

from __future__ import annotations

import json

from nodemedic.probes.cri import STATUS, CriClient, api_pb2

# containerd 2.x reports its deprecations as this CRI Status condition (1.x has none).
NO_DEPRECATIONS = "ContainerdHasNoDeprecationWarnings"
LIST_IMAGES = "/runtime.v1.ImageService/ListImages"
PULL_IMAGE = "/runtime.v1.ImageService/PullImage"


class ImageCri(CriClient):
    async def image_tags(self) -> list[str]:
        resp = await self._unary(LIST_IMAGES, api_pb2.ListImagesRequest(), api_pb2.ListImagesResponse)
        return [tag for image in resp.images for tag in image.repo_tags]

    async def deprecations(self) -> dict[str, str] | None:
        """containerd 2.x's deprecation warnings (id -> message) from CRI Status; None on 1.x."""
        resp = await self._unary(STATUS, api_pb2.StatusRequest(verbose=False), api_pb2.StatusResponse)
        for condition in resp.status.conditions:
            if condition.type == NO_DEPRECATIONS:
                if condition.status:
                    return {}
                try:
                    found = json.loads(condition.message or "{}")
                except ValueError:
                    return {"unparsed": condition.message}
                return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}
        return None

    async def pull(self, ref: str, timeout: float) -> str:
        """PullImage without credentials (containerd uses its own configured ones); the image ref."""
        request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref))
        resp = await self._unary(PULL_IMAGE, request, api_pb2.PullImageResponse, timeout)
        return str(resp.image_ref)


def registry_of(ref: str) -> str:
    """The registry host of an image reference, as containerd normalises it (docker.io when the
    first path component is not a host)."""
    name = ref.split("@", 1)[0]
    first, slash, _rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"
