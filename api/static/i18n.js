"use strict";
/* zh-CN labels with an English switch; the choice is kept in localStorage. */
var I18N = (function () {
  var dict = {
    "zh-CN": {
      title: "平安 · 视频分析", username: "用户名", password: "密码", login: "登录", logout: "退出",
      login_failed: "用户名或密码错误", login_locked: "登录失败次数过多，请稍后再试", switch_lang: "English", events: "实时事件", cameras: "摄像头状态",
      detail: "事件详情", none_selected: "请选择一个事件", time: "时间", type: "类型", camera: "摄像头",
      zone: "区域", dwell: "停留", state: "状态", disposition: "处置", plate: "车牌", grid: "网格",
      evidence: "证据", history: "处置记录", remark: "备注", live: "实时连接", offline: "连接中断", nolive: "无实时推送",
      no_events: "暂无事件", seconds: "秒", started: "开始", ended: "结束", actor: "操作人", load_more: "加载更多", all_types: "全部类型", all_dispositions: "全部处置状态",
      all_cameras: "全部摄像头", download_pack: "下载证据包", parking: "停车位", bins_csv: "导出桶位统计 (CSV)",
      "type.illegal_parking": "违法停车", "type.bin_overflow": "垃圾满溢", "type.camera_offline": "摄像头离线",
      "state.open": "进行中", "state.update": "进行中", "state.closed": "已结束",
      "disp.new": "新事件", "disp.acknowledged": "已确认", "disp.dispatched": "已派单", "disp.resolved": "已处理",
      "disp.false_alarm": "误报",
      "act.acknowledge": "确认", "act.dispatch": "派单", "act.resolve": "处理完成", "act.false_alarm": "标记误报",
      "act.reopen": "重新打开",
      "health.ok": "正常", "health.behind": "处理滞后", "health.degraded": "异常", "health.offline": "离线", "health.unknown": "未知",
      "lag.age": "结果延迟", "lag.shed": "丢帧", "lag.hint": "检测跟不上此摄像头：本机接入的摄像头超出了处理能力；可改用子码流、降低检测频率或分到其他主机",
      "decode.every": "逐帧解码 · 关键帧间隔", "decode.hint": "此摄像头的关键帧（I帧）间隔过长，只解码关键帧不够用，需逐帧解码，CPU 约为4倍：请在摄像头上把 I 帧间隔调到检测周期以内（或调低 min_detect_fps）",
      "role.operator": "值班员", "role.police": "交警", "role.admin": "管理员", error: "操作失败",
      bin_stations: "垃圾站状态", "station.overflow": "满溢", "station.clean": "正常", severity: "等级",
      escalated: "超时未确认", "disp.escalated": "超时升级", bins: "桶号"
    },
    en: {
      title: "Pingan · Video analytics", username: "Username", password: "Password", login: "Log in",
      logout: "Log out", login_failed: "Wrong username or password",
      login_locked: "Too many failed logins; try again in a few minutes", switch_lang: "中文", events: "Live events",
      cameras: "Cameras", detail: "Event detail", none_selected: "Select an event", time: "Time", type: "Type",
      camera: "Camera", zone: "Zone", dwell: "Dwell", state: "State", disposition: "Disposition", plate: "Plate",
      grid: "Grid", evidence: "Evidence", history: "History", remark: "Remark", live: "Live", offline: "Disconnected", nolive: "No live feed",
      no_events: "No events yet", seconds: "s", started: "Started", ended: "Ended", actor: "By", load_more: "Load more", all_types: "All types",
      all_dispositions: "All dispositions", all_cameras: "All cameras", download_pack: "Download evidence pack", parking: "Parking", bins_csv: "Bin statistics (CSV)",
      "type.illegal_parking": "Illegal parking", "type.bin_overflow": "Bin overflow",
      "type.camera_offline": "Camera offline",
      "state.open": "Open", "state.update": "Open", "state.closed": "Closed",
      "disp.new": "New", "disp.acknowledged": "Acknowledged", "disp.dispatched": "Dispatched",
      "disp.resolved": "Resolved", "disp.false_alarm": "False alarm",
      "act.acknowledge": "Acknowledge", "act.dispatch": "Dispatch", "act.resolve": "Resolve",
      "act.false_alarm": "False alarm", "act.reopen": "Reopen",
      "health.ok": "OK", "health.behind": "Falling behind", "health.degraded": "Degraded", "health.offline": "Offline", "health.unknown": "Unknown",
      "lag.age": "results after", "lag.shed": "frames shed",
      "lag.hint": "The detector is not keeping up with this camera: the box carries more cameras than it can serve; detect on the sub-stream, lower detect_fps, or move cameras to another box",
      "decode.every": "decoding every frame · keyframe every", "decode.hint": "This camera's keyframes (I-frames) come too seldom for keyframe-only decoding, so every frame is decoded at ~4x the CPU: set the camera's I-frame interval within the detection period (or lower min_detect_fps)",
      "role.operator": "Operator", "role.police": "Police", "role.admin": "Admin", error: "Failed",
      bin_stations: "Bin stations", "station.overflow": "Overflowing", "station.clean": "Clean", severity: "level",
      escalated: "Overdue", "disp.escalated": "Escalated", bins: "Bins"
    }
  };
  var lang = localStorage.getItem("pingan.lang") || "zh-CN";
  if (!dict[lang]) lang = "zh-CN";
  function t(key) { var d = dict[lang]; return key in d ? d[key] : key; }
  function apply(root) {
    document.documentElement.lang = lang;
    root.querySelectorAll("[data-i18n]").forEach(function (el) { el.textContent = t(el.getAttribute("data-i18n")); });
  }
  function toggle() {
    lang = lang === "zh-CN" ? "en" : "zh-CN";
    localStorage.setItem("pingan.lang", lang);
    apply(document);
    document.dispatchEvent(new Event("langchange"));
  }
  return { t: t, apply: apply, toggle: toggle, lang: function () { return lang; } };
})();
