"""Ready-to-use retrieval URLs on the configured media gateway, one set per granted feed.

Video is re-served by the gateway in every protocol it speaks, the feed's own protocol first
(GB/T 28181 devices are re-served as RTSP). RTSP carries the JWT as ``?token=``, RTMP the
compact token (nginx-rtmp cuts play arguments at 256 bytes);
HLS and WebRTC (WHEP) take it as ``Authorization: Bearer``. Sensors are served over MQTT
(token as the password) and HTTP (bearer). The feed's internal URL never appears here.
"""

from __future__ import annotations

from urllib.parse import quote

from schemas.access import RetrievalUrl
from schemas.settings import Settings

VIDEO_ORDER = ("rtsp", "rtmp", "hls", "webrtc")
SENSOR_ORDER = ("mqtt", "http")
BEARER_NOTE = "send the token as 'Authorization: Bearer <token>'"


def _video_url(
    protocol: str, settings: Settings, path: str, token: str, compact_token: str | None
) -> RetrievalUrl:
    host = settings.media_gateway_host
    quoted = quote(token, safe="")
    if protocol == "rtsp":
        return RetrievalUrl(
            protocol="rtsp",
            url=f"rtsp://{host}:{settings.media_gateway_rtsp_port}/{path}?token={quoted}",
            auth="query_token",
            note="the token is in the URL; keep the URL private",
        )
    if protocol == "rtmp":
        app, stream = path.split("/", 1)
        rtmp_token = quote(compact_token, safe="") if compact_token else quoted
        return RetrievalUrl(
            protocol="rtmp",
            url=f"rtmp://{host}:{settings.media_gateway_rtmp_port}/{path}?token={rtmp_token}",
            auth="query_token",
            note=(
                "the compact token is in the URL; keep it private. RTMP application "
                f"{app!r}, stream {stream!r}: clients that split the URL elsewhere take "
                f"-rtmp_app {app} -rtmp_playpath '{stream}?token=...' (FFmpeg)"
            ),
        )
    if protocol == "hls":
        return RetrievalUrl(
            protocol="hls",
            url=f"http://{host}:{settings.media_gateway_hls_port}/{path}/index.m3u8",
            auth="bearer_header",
            note=BEARER_NOTE,
        )
    return RetrievalUrl(
        protocol="webrtc",
        url=f"http://{host}:{settings.media_gateway_webrtc_port}/{path}/whep",
        auth="bearer_header",
        note=BEARER_NOTE + " on the WHEP request",
    )


def _sensor_url(protocol: str, settings: Settings, path: str) -> RetrievalUrl:
    host = settings.media_gateway_host
    if protocol == "mqtt":
        return RetrievalUrl(
            protocol="mqtt",
            url=f"mqtt://{host}:{settings.media_gateway_mqtt_port}/{path}",
            auth="mqtt_password",
            note="subscribe to the topic in the path; any user name, the token as the password",
        )
    return RetrievalUrl(
        protocol="http",
        url=f"http://{host}:{settings.media_gateway_http_port}/{path}/observations",
        auth="bearer_header",
        note=BEARER_NOTE,
    )


def retrieval_urls(
    settings: Settings,
    *,
    feed_kind: str,
    feed_protocol: str,
    path: str,
    token: str,
    compact_token: str | None = None,
) -> list[RetrievalUrl]:
    if feed_kind == "sensor":
        order = sorted(SENSOR_ORDER, key=lambda protocol: protocol != feed_protocol)
        return [_sensor_url(protocol, settings, path) for protocol in order]
    first = "rtsp" if feed_protocol == "gb28181" else feed_protocol
    order = sorted(VIDEO_ORDER, key=lambda protocol: protocol != first)
    return [_video_url(protocol, settings, path, token, compact_token) for protocol in order]
