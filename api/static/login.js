"use strict";
(function () {
  if (new URLSearchParams(location.search).has("failed")) document.getElementById("failed").hidden = false;
  document.getElementById("lang").addEventListener("click", function () { I18N.toggle(); });
  I18N.apply(document);
})();
