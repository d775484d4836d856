"use strict";
(function () {
  var q = new URLSearchParams(location.search);
  if (q.has("failed")) document.getElementById("failed").hidden = false;
  if (q.has("locked")) document.getElementById("locked").hidden = false;
  document.getElementById("lang").addEventListener("click", function () { I18N.toggle(); });
  I18N.apply(document);
})();
