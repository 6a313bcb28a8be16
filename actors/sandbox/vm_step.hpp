// One VmHost call, as a CAF request. VmHost answers on the asio side through
// a callback; a flow in an actor wants to continue from that answer with
// .then(), on its own thread, holding what it is in the middle of in the
// continuation. vm_step spawns a one-shot actor that starts the call, turns
// the callback into a message to itself and replies with the value (or the
// error, carrying its kind), then stops.
#pragma once

#include <functional>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/send.hpp>

#include "common/result.hpp"
#include "messages/caf_types.hpp"

namespace vesicle {

namespace detail {
// What a step's reply carries: its value, or done for a Result<void>.
template <class T> struct StepValue {
  using type = T;
  static T take(Result<T>& result) { return std::move(result.value()); }
};
template <> struct StepValue<void> {
  using type = done_atom;
  static done_atom take(Result<void>&) { return done_atom::value; }
};
} // namespace detail

template <class T> using StepDone = std::function<void(Result<T>)>;
template <class T> using StepStart = std::function<void(StepDone<T>)>;

// Spawns the step's actor; ask it with vm_step_atom (caf::infinite: VmHost's
// calls keep their own time limits).
template <class T> caf::actor spawn_vm_step(caf::actor_system& system, StepStart<T> start) {
  using Value = typename detail::StepValue<T>::type;
  // `start` goes in as an argument: CAF 0.17 binds an actor function spawned
  // without any to a null argument tuple (UBSan stops on it; see ask.hpp).
  auto behavior = [](caf::event_based_actor* self, StepStart<T> start) -> caf::behavior {
    return {
        [=](vm_step_atom) {
          auto promise = self->make_response_promise<Value>();
          caf::actor me = caf::actor_cast<caf::actor>(self);
          start([me](Result<T> outcome) {
            if (outcome)
              caf::anon_send(me, vm_step_atom::value, caf::error{},
                             detail::StepValue<T>::take(outcome));
            else
              caf::anon_send(me, vm_step_atom::value, to_caf_error(outcome.error()), Value{});
          });
          self->become([=](vm_step_atom, caf::error& failure, Value& value) mutable {
            if (failure)
              promise.deliver(std::move(failure));
            else
              promise.deliver(std::move(value));
            self->quit();
          });
          return promise;
        },
    };
  };
  return system.spawn(behavior, std::move(start));
}

// Runs `start` as a step of `self`'s flow; continue with .then(value, error).
template <class T, class Self> auto vm_step(Self* self, StepStart<T> start) {
  return self->request(spawn_vm_step<T>(self->system(), std::move(start)), caf::infinite,
                       vm_step_atom::value);
}

} // namespace vesicle
