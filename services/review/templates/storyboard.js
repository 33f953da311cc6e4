// Seeks the final video to a segment ("play from here") and marks the card of the segment playing.
// The page shows everything without it.
(function () {
  document.documentElement.classList.add("js");  // the CSP let this script run (its hash is the page's)
  var video = document.getElementById("final-video");
  if (!video) { return; }
  var cards = Array.prototype.slice.call(document.querySelectorAll(".segment"));
  var starts = cards.map(function (c) { return parseFloat(c.getAttribute("data-start")); });
  var head = document.getElementById("playhead");
  var width = parseFloat(document.getElementById("waveform").getAttribute("data-width"));
  var duration = parseFloat(document.getElementById("waveform").getAttribute("data-duration"));
  var playing = null;
  document.addEventListener("click", function (event) {
    var link = event.target.closest ? event.target.closest("a.play") : null;
    if (!link) { return; }
    video.currentTime = parseFloat(link.getAttribute("data-t"));
    video.play();
  });
  video.addEventListener("timeupdate", function () {
    var t = video.currentTime, i = 0;
    while (i + 1 < starts.length && starts[i + 1] <= t) { i += 1; }
    if (playing !== cards[i]) {
      if (playing) { playing.classList.remove("playing"); }
      playing = cards[i] || null;
      if (playing) { playing.classList.add("playing"); }
    }
    if (head && duration > 0) {
      var x = Math.min(t / duration, 1) * width;
      head.setAttribute("x1", x); head.setAttribute("x2", x); head.style.display = "inline";
    }
  });
})();
